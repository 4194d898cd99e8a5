"""The application factory: wires settings, stores and routes; owns nothing itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import suppress

from aiohttp import web

from .. import board as board_mod
from ..auth import Verifier
from ..board import Board
from ..config import Settings
from ..hub import Hub
from ..metrics import Metrics
from . import admin, apidocs, ops, page, scores, stream
from .durability import durability_ctx
from .middleware import contract_middleware
from .state import BOARD, HUB, METRICS, SETTINGS, VERIFIER

logger = logging.getLogger(__name__)
HUB_STOP_TIMEOUT_S = 3.0
# Longest header value the HTTP parser accepts. Past it the parser refuses the request
# before any route runs (400 bad_request, answered by http/runner.py), so it
# sits well above anything a route refuses with a precise error (8 KiB tokens) or
# tolerates (a 100 KiB garbage Last-Event-ID).
MAX_HEADER_FIELD = 128 * 1024


def redis_client(settings: Settings) -> board_mod.RedisClient:
    """The configured Redis, or the embedded in-process one."""
    if settings.embedded_redis:
        from .. import embedded

        return embedded.redis_client(settings)
    return board_mod.connect(settings.redis_url, cluster=settings.redis_cluster)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = redis_client(settings)
    cluster = settings.redis_cluster and not settings.embedded_redis
    store = Board(
        client,
        leeway_s=settings.jwt_leeway_s,
        rate_limit_per_min=settings.rate_limit_per_min,
        subscriber=board_mod.ClusterSubscriber(settings.redis_url, client) if cluster else None,
    )
    app[BOARD] = store
    app[HUB] = Hub(store, app[METRICS])
    yield
    await store.aclose()


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB]
    task = asyncio.create_task(hub.run(), name="scoreboard-hub")
    yield
    hub.stop()
    try:
        await asyncio.wait_for(task, HUB_STOP_TIMEOUT_S)
    except TimeoutError:
        logger.warning("the live subscription did not stop in time")
    with suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, metrics: Metrics | None = None) -> web.Application:
    """The aiohttp application for `settings` (secrets already filled in and checked)."""
    metrics = metrics or Metrics()
    app = web.Application(
        middlewares=[contract_middleware(metrics)],
        client_max_size=scores.MAX_BODY,
        handler_args={"max_field_size": MAX_HEADER_FIELD},
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[VERIFIER] = Verifier(settings)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(durability_ctx)
    app.cleanup_ctx.append(_hub_ctx)
    stream.setup(app)
    for prefix in ("", "/boards/{boardId}"):
        scores.add_routes(app, prefix)
        stream.add_routes(app, prefix)
    ops.add_routes(app)
    apidocs.add_routes(app)
    page.add_routes(app)
    for prefix in ("", "/boards/{boardId}"):
        scores.add_user_routes(app, prefix)
        admin.add_routes(app, prefix)
    return app
