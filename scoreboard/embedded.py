"""The embedded default: an in-process Redis (fakeredis running the same Lua)."""

from __future__ import annotations

import logging
from typing import Any

import fakeredis

from .config import Settings

logger = logging.getLogger(__name__)

BANNER = (
    "EMBEDDED MODE: no SCOREBOARD_REDIS_URL, so the live board is an in-process Redis "
    "and persistence is a SQLite file in {data_dir}. This is for trying the service and "
    "small single-node use; production uses real Redis and PostgreSQL."
)


def redis_client(settings: Settings) -> Any:
    """A fresh in-process Redis client; its server lives as long as the client."""
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7, 0)))


def announce(settings: Settings) -> None:
    """Say loudly that this process runs on the embedded default."""
    logger.warning(BANNER.format(data_dir=settings.data_path.resolve()))
