"""`scoreboard serve`: run the HTTP application (one process, or a supervised group)."""

from __future__ import annotations

import asyncio
import gc
import logging

from aiohttp import web

from . import embedded, logs
from .config import Settings
from .http.app import create_app
from .http.runner import run_app

logger = logging.getLogger(__name__)


def install_uvloop() -> None:
    """Use uvloop's event loop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def settle_gc(app: web.Application) -> None:
    """Move what startup built out of the collector's way (an on_startup hook).

    Everything alive once the application has started (modules, routes, the OpenAPI
    document, connection pools) lives as long as the process. A full collection walked
    all of it again and again: 45-70 ms pauses under load on the benchmark machine,
    which was the whole of the increment path's p99.9. Frozen objects are never
    scanned; objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def serve(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    logs.setup(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from .supervisor import supervise

        return supervise(settings)
    if settings.embedded_redis or settings.embedded_database:
        embedded.announce(settings)
    install_uvloop()
    app = create_app(settings)
    app.on_startup.append(settle_gc)
    logger.info("listening on http://%s:%d", settings.http_host, settings.http_port)
    run_app(
        app,
        host=settings.http_host,
        port=settings.http_port,
        shutdown_timeout=10,
        # In server mode several `serve` processes (or containers sharing a network
        # namespace) may share the port; the embedded store lives in one process, so
        # there a second server on the port is refused as usual.
        reuse_port=not settings.embedded_redis,
    )
    return 0
