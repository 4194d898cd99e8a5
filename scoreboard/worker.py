"""`scoreboard worker`, `reseed`, `verify` and `migrate`: the durable side's commands."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from contextlib import suppress
from typing import TextIO

import redis.exceptions as rexc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import board as board_mod
from . import logs
from .config import Settings
from .errors import DatabaseUnavailable
from .metrics import Metrics
from .persist import make_store
from .persist.progress import Progress
from .persist.reseed import ReseedBusy, Reseeder, nonce_window_s
from .persist.verify import verify
from .sink import Sink, SinkOptions, redis_durability_warnings

logger = logging.getLogger(__name__)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _metrics_site(metrics: Metrics, sink: Sink, host: str, port: int) -> web.AppRunner:
    async def metrics_route(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "lag": sink.lag})

    app = web.Application()
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def run_worker(settings: Settings, options: SinkOptions, metrics_port: int = 0) -> int:
    """Drain every board's stream into the database until SIGINT/SIGTERM."""
    client = board_mod.connect(settings.redis_url, cluster=settings.redis_cluster)
    store = make_store(settings)
    await store.open()
    metrics = Metrics()
    sink = Sink(client, store, metrics, options)
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Only the main thread may take signals (an embedding caller may run us elsewhere).
        with suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, sink.stop)
            handled.append(sig)
    runner: web.AppRunner | None = None
    try:
        for warning in await redis_durability_warnings(client):
            logger.warning(warning)
        if metrics_port:
            runner = await _metrics_site(metrics, sink, settings.http_host, metrics_port)
        await sink.run()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
        await client.aclose()
        await store.close()
    return 0


def worker(settings: Settings, options: SinkOptions, metrics_port: int) -> int:
    logs.setup(settings.log_level, settings.log_format)
    _install_uvloop()
    return asyncio.run(run_worker(settings, options, metrics_port))


async def run_migrate(settings: Settings, out: TextIO) -> int:
    store = make_store(settings)
    try:
        done = await store.migrate()
    except DatabaseUnavailable as e:
        print(f"migrate: {store.where}: {e.message}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    if done.applied:
        applied = ", ".join(str(v) for v in done.applied)
        out.write(f"migrate: {store.where}: applied {applied}; schema at version {done.version}\n")
    else:
        out.write(f"migrate: {store.where}: schema already at version {done.version}\n")
    return 0


async def run_reseed(
    settings: Settings, boards: Sequence[str], progress: Progress, out: TextIO
) -> int:
    client = board_mod.connect(settings.redis_url, cluster=settings.redis_cluster)
    store = make_store(settings)
    await store.open()
    try:
        await store.migrate()
        reseeder = Reseeder(
            client, store, nonce_window_s=nonce_window_s(settings), progress=progress
        )
        done = await reseeder.run(boards)
    except (DatabaseUnavailable, ReseedBusy) as e:
        print(f"reseed: {e}", file=sys.stderr)
        return 1
    except (OSError, rexc.RedisError) as e:
        print(f"reseed: Redis failed: {e}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
        await store.close()
    users = sum(r.users for r in done)
    out.write(f"reseed: {len(done)} board(s), {users} users restored from {store.where}\n")
    return 0


async def run_verify(settings: Settings, boards: Sequence[str], wait_s: float, out: TextIO) -> int:
    client = board_mod.connect(settings.redis_url, cluster=settings.redis_cluster)
    store = make_store(settings)
    await store.open()
    try:
        report = await verify(client, store, boards=boards, wait_s=wait_s)
    except DatabaseUnavailable as e:
        print(f"verify: the database is unavailable: {e.message}", file=sys.stderr)
        return 1
    except (OSError, rexc.RedisError) as e:
        print(f"verify: Redis failed: {e}", file=sys.stderr)
        return 1
    finally:
        with suppress(Exception):
            await client.aclose()
        await store.close()
    report.write(out)
    return 0 if report.agrees else 1
