"""Durable storage: schema, migrations, the sink's writes, reseed and verify.

`open_store(settings)` gives PostgreSQL when `SCOREBOARD_DATABASE_URL` is set and
the embedded default's SQLite file otherwise; both implement `Store`.
"""

from __future__ import annotations

from ..config import Settings
from .base import Batch, Erasure, Event, Migrated, NonceRow, Snapshot, Store, UserScore

__all__ = [
    "Batch",
    "Erasure",
    "Event",
    "Migrated",
    "NonceRow",
    "Snapshot",
    "Store",
    "UserScore",
    "make_store",
]


def make_store(settings: Settings, *, max_connections: int = 4) -> Store:
    """The configured store, not yet opened (call `await store.open()`)."""
    if settings.embedded_database:
        from .sqlite import SqliteStore

        return SqliteStore.in_dir(settings.data_path)
    from .postgres import PostgresStore

    return PostgresStore(settings.database_url, max_size=max_connections)
