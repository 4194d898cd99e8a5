"""Operations routes: metrics, health, readiness."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import DatabaseUnavailable, ScoreboardError
from . import spec
from .scores import json_response
from .state import BOARD, METRICS, STORE

READY_TIMEOUT_S = 1.0


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return json_response(b'{"status":"ok"}')


async def readyz(request: web.Request) -> web.Response:
    status = {"redis": "ok", "database": "ok"}
    try:
        await asyncio.wait_for(request.app[BOARD].ping(), READY_TIMEOUT_S)
    except (ScoreboardError, TimeoutError) as e:
        status["redis"] = str(e) or "timeout"
    store = request.app.get(STORE)
    try:
        if store is None:
            raise DatabaseUnavailable("not configured")
        await asyncio.wait_for(store.ping(), READY_TIMEOUT_S)
    except (ScoreboardError, TimeoutError) as e:
        status["database"] = str(e) or "timeout"
    ok = all(v == "ok" for v in status.values())
    return json_response(orjson.dumps(status), status=200 if ok else 503)


def add_routes(app: web.Application) -> None:
    spec.register(app, "metrics", metrics)
    spec.register(app, "healthz", healthz)
    spec.register(app, "readyz", readyz)
