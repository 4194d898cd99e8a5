"""The SQLite store of the embedded default: the same tables, written off the event loop.

Every call runs on one dedicated thread that owns the connection (sqlite3 is
blocking); reads for reseed and verify get their own connection and thread so a
long scan never holds the sink up. WAL mode lets readers and the writer overlap;
`synchronous=FULL` makes each committed batch survive a power cut.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DatabaseUnavailable
from .base import Batch, Migrated, NonceRow, Snapshot, Store, user_key

logger = logging.getLogger(__name__)

T = TypeVar("T")
FILENAME = "scoreboard.db"
# Bound variables per statement stay well under SQLite's limit.
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "user_scores, score_events, score_erasures",
        (
            """CREATE TABLE user_scores (
                board_id   TEXT    NOT NULL,
                user_id    TEXT    NOT NULL,
                score      INTEGER NOT NULL,
                updated_at TEXT    NOT NULL,
                version    INTEGER NOT NULL,
                PRIMARY KEY (board_id, user_id)
            ) WITHOUT ROWID""",
            """CREATE TABLE score_events (
                id          TEXT    PRIMARY KEY,
                board_id    TEXT    NOT NULL,
                user_id     TEXT,
                delta       INTEGER NOT NULL,
                nonce       TEXT,
                source      TEXT    NOT NULL,
                score_after INTEGER NOT NULL,
                created_at  TEXT    NOT NULL,
                seq         INTEGER,
                rank_after  INTEGER
            )""",
            "CREATE INDEX score_events_user_time ON score_events (board_id, user_id, created_at)",
            "CREATE INDEX score_events_created ON score_events (created_at)",
            """CREATE TABLE score_erasures (
                board_id  TEXT    NOT NULL,
                user_key  BLOB    NOT NULL,
                version   INTEGER NOT NULL,
                erased_at TEXT    NOT NULL,
                PRIMARY KEY (board_id, user_key)
            ) WITHOUT ROWID""",
        ),
    ),
)


def iso(ms: int) -> str:
    """UTC ISO-8601 with milliseconds: sorts as text in time order."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


_BUSY_TIMEOUT_S = 10


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=_BUSY_TIMEOUT_S, check_same_thread=False
    )
    # Switching a new file to WAL needs it to itself, and SQLite answers "database is
    # locked" at once, without its busy wait, while another connection opens it too.
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.02)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class _Thread:
    """One thread and one connection; `run(fn)` calls fn(conn) there."""

    def __init__(self, path: Path, name: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = _connect(self._path)
        return fn(self._conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._call, fn)
        except sqlite3.Error as e:
            raise DatabaseUnavailable(f"sqlite: {e}"[:120]) from e

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


def _in_chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]


def _migrate(conn: sqlite3.Connection) -> Migrated:
    # BEGIN IMMEDIATE takes the write lock first: a second process waits, then
    # reads the version the first one left.
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        applied: list[int] = []
        for m in MIGRATIONS:
            if m.version <= current:
                continue
            for statement in m.statements:
                conn.execute(statement)
            applied.append(m.version)
            logger.info("applied migration %d: %s", m.version, m.name)
        if applied:
            conn.execute(f"PRAGMA user_version = {applied[-1]:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return Migrated(max(current, *applied) if applied else current, tuple(applied))


def _write(conn: sqlite3.Connection, batch: Batch) -> None:
    board = batch.board
    erasures = batch.newest_erasures()
    users = batch.event_users()
    conn.execute("BEGIN IMMEDIATE")
    try:
        if erasures:
            conn.executemany(
                "INSERT INTO score_erasures (board_id, user_key, version, erased_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (board_id, user_key) DO UPDATE"
                " SET version = excluded.version, erased_at = excluded.erased_at"
                " WHERE score_erasures.version < excluded.version",
                [(board, user_key(e.user_id), e.seq, iso(e.ts_ms)) for e in erasures],
            )
            conn.executemany(
                "DELETE FROM user_scores WHERE board_id = ? AND user_id = ? AND version < ?",
                [(board, e.user_id, e.seq) for e in erasures],
            )
            conn.executemany(
                "UPDATE score_events SET user_id = NULL"
                " WHERE board_id = ? AND user_id = ? AND seq < ?",
                [(board, e.user_id, e.seq) for e in erasures],
            )
        tombstones: dict[str, int] = {}
        keys = {user_key(u): u for u in users}
        for part in _in_chunks(list(keys)):
            marks = ",".join("?" * len(part))
            for key, version in conn.execute(
                "SELECT user_key, version FROM score_erasures"
                f" WHERE board_id = ? AND user_key IN ({marks})",
                (board, *part),
            ):
                tombstones[keys[bytes(key)]] = int(version)
        for e in erasures:
            tombstones[e.user_id] = max(tombstones.get(e.user_id, -1), e.seq)
        events, rows = batch.resolve(tombstones)
        conn.executemany(
            "INSERT INTO score_events (id, board_id, user_id, delta, nonce, source,"
            " score_after, created_at, seq, rank_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            [
                (
                    e.id,
                    board,
                    e.user_id,
                    e.delta,
                    e.nonce,
                    e.source,
                    e.score,
                    iso(e.ts_ms),
                    e.seq,
                    e.rank,
                )
                for e in events
            ],
        )
        conn.executemany(
            "INSERT INTO user_scores (board_id, user_id, score, updated_at, version)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (board_id, user_id) DO UPDATE"
            " SET score = excluded.score, updated_at = excluded.updated_at,"
            " version = excluded.version WHERE user_scores.version < excluded.version",
            [(board, r.user_id, r.score, iso(r.ts_ms), r.version) for r in rows],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteStore(Store):
    """A SQLite file (the embedded default's `<data dir>/scoreboard.db`)."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _Thread(path, "scoreboard-sqlite")

    @classmethod
    def in_dir(cls, data_dir: Path) -> SqliteStore:
        return cls(data_dir / FILENAME)

    @property
    def where(self) -> str:
        return f"sqlite:{self.path}"

    async def open(self) -> None:
        """Nothing to start: the file is opened on first use."""

    async def close(self) -> None:
        await self._writer.close()

    async def migrate(self) -> Migrated:
        return await self._writer.run(_migrate)

    async def ping(self) -> None:
        await self._writer.run(lambda c: c.execute("SELECT 1").fetchone())

    async def write(self, batch: Batch) -> None:
        await self._writer.run(lambda c: _write(c, batch))

    async def boards(self) -> list[str]:
        def q(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT DISTINCT board_id FROM user_scores"
                " UNION SELECT DISTINCT board_id FROM score_erasures"
            ).fetchall()
            return sorted(str(r[0]) for r in rows)

        return await self._writer.run(q)

    def snapshot(self, board: str) -> AbstractAsyncContextManager[Snapshot]:
        return self._snapshot(board)

    @asynccontextmanager
    async def _snapshot(self, board: str) -> AsyncIterator[Snapshot]:
        reader = _Thread(self.path, "scoreboard-sqlite-read")
        try:
            # The first read of a deferred transaction fixes the snapshot (WAL).
            await reader.run(lambda c: c.execute("BEGIN").fetchall())
            await reader.run(lambda c: c.execute("SELECT count(*) FROM user_scores").fetchone())
            yield _SqliteSnapshot(reader, board)
        finally:
            try:
                await reader.run(lambda c: c.execute("ROLLBACK").fetchall())
            finally:
                await reader.close()

    async def recent_nonces(
        self, boards: Sequence[str], since_ms: int, chunk: int
    ) -> AsyncIterator[list[NonceRow]]:
        reader = _Thread(self.path, "scoreboard-sqlite-read")
        try:
            marks = ",".join("?" * len(boards))
            cur = await reader.run(
                lambda c: c.execute(
                    "SELECT board_id, nonce, id, score_after, rank_after, created_at"
                    f" FROM score_events WHERE created_at >= ? AND board_id IN ({marks})"
                    " AND nonce IS NOT NULL",
                    (iso(since_ms), *boards),
                )
            )
            while rows := await reader.run(lambda c: cur.fetchmany(chunk)):
                yield [
                    NonceRow(b, n, i, int(s), None if r is None else int(r), _ms(t))
                    for b, n, i, s, r, t in rows
                ]
        finally:
            await reader.close()

    async def scores_of(self, board: str, users: Sequence[str]) -> dict[str, int]:
        def q(c: sqlite3.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for part in _in_chunks(list(users)):
                marks = ",".join("?" * len(part))
                for u, s in c.execute(
                    "SELECT user_id, score FROM user_scores"
                    f" WHERE board_id = ? AND user_id IN ({marks})",
                    (board, *part),
                ):
                    out[str(u)] = int(s)
            return out

        return await self._writer.run(q)


class _SqliteSnapshot:
    def __init__(self, reader: _Thread, board: str) -> None:
        self._reader = reader
        self._board = board

    async def _rows(self, sql: str, chunk: int) -> AsyncIterator[list[Any]]:
        cur = await self._reader.run(lambda c: c.execute(sql, (self._board,)))
        while rows := await self._reader.run(lambda c: cur.fetchmany(chunk)):
            yield rows

    async def scores(self, chunk: int) -> AsyncIterator[list[tuple[str, int, int]]]:
        sql = "SELECT user_id, score, version FROM user_scores WHERE board_id = ?"
        async for rows in self._rows(sql, chunk):
            yield [(str(u), int(s), int(v)) for u, s, v in rows]

    async def ordered(self, chunk: int) -> AsyncIterator[list[tuple[str, int]]]:
        sql = (
            "SELECT user_id, score FROM user_scores WHERE board_id = ? ORDER BY score DESC, user_id"
        )
        async for rows in self._rows(sql, chunk):
            yield [(str(u), int(s)) for u, s in rows]

    async def versions(self, users: Sequence[str]) -> dict[str, int]:
        def q(c: sqlite3.Connection) -> dict[str, int]:
            out: dict[str, int] = {}
            for part in _in_chunks(list(users)):
                marks = ",".join("?" * len(part))
                for u, v in c.execute(
                    "SELECT user_id, version FROM user_scores"
                    f" WHERE board_id = ? AND user_id IN ({marks})",
                    (self._board, *part),
                ):
                    out[str(u)] = int(v)
            return out

        return await self._reader.run(q)

    async def count(self) -> int:
        row = await self._reader.run(
            lambda c: c.execute(
                "SELECT count(*) FROM user_scores WHERE board_id = ?", (self._board,)
            ).fetchone()
        )
        return int(row[0])

    async def erased_version(self) -> int:
        row = await self._reader.run(
            lambda c: c.execute(
                "SELECT coalesce(max(version), 0) FROM score_erasures WHERE board_id = ?",
                (self._board,),
            ).fetchone()
        )
        return int(row[0])
