"""`scoreboard serve`: run the HTTP application."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from . import embedded, logs
from .config import Settings
from .http.app import create_app

logger = logging.getLogger(__name__)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    logs.setup(settings.log_level, settings.log_format)
    if settings.embedded_redis or settings.embedded_database:
        embedded.announce(settings)
    _install_uvloop()
    app = create_app(settings)
    logger.info("listening on http://%s:%d", settings.http_host, settings.http_port)
    web.run_app(
        app,
        host=settings.http_host,
        port=settings.http_port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
        handle_signals=True,
    )
    return 0
