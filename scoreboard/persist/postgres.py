"""The PostgreSQL store: schema migrations and the sink's batched, idempotent writes."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from ..errors import DatabaseUnavailable
from .base import Batch, Erasure, Migrated, NonceRow, Snapshot, Store, user_key

logger = logging.getLogger(__name__)

# Advisory lock ids: (class, key) pairs; the class keeps ours apart from other users'.
LOCK_CLASS = 0x5B0A
MIGRATE_LOCK_KEY = 1


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "user_scores, score_events, score_erasures",
        """
        CREATE TABLE user_scores (
            board_id   text        NOT NULL,
            user_id    uuid        NOT NULL,
            score      bigint      NOT NULL,
            updated_at timestamptz NOT NULL,
            version    bigint      NOT NULL,
            PRIMARY KEY (board_id, user_id)
        );
        -- user_id is NULL once the user is erased; seq is the board's event
        -- sequence number (user_scores.version of the change); rank_after is the
        -- rank the increment answered, repeated by a replay's 409.
        CREATE TABLE score_events (
            id          uuid        PRIMARY KEY,
            board_id    text        NOT NULL,
            user_id     uuid,
            delta       bigint      NOT NULL,
            nonce       text,
            source      text        NOT NULL,
            score_after bigint      NOT NULL,
            created_at  timestamptz NOT NULL,
            seq         bigint,
            rank_after  bigint
        );
        CREATE INDEX score_events_user_time ON score_events (board_id, user_id, created_at);
        CREATE INDEX score_events_created ON score_events (created_at);
        -- One tombstone per erased user: a hash of the user id, never the id itself.
        CREATE TABLE score_erasures (
            board_id  text        NOT NULL,
            user_key  bytea       NOT NULL,
            version   bigint      NOT NULL,
            erased_at timestamptz NOT NULL,
            PRIMARY KEY (board_id, user_key)
        );
        """,
    ),
)

_TS = "(timestamptz 'epoch' + {} * interval '1 millisecond')"
_MS = "(extract(epoch from {}) * 1000)::int8"

_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(%s, hashtext(%s))"
_LOCK_EXCLUSIVE = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"

# Arrays go in binary (%b): no text quoting of every element on either side.
_ERASE_TOMBSTONES = f"""
INSERT INTO score_erasures (board_id, user_key, version, erased_at)
SELECT %b, k, v, {_TS.format("ts")} FROM unnest(%b::bytea[], %b::int8[], %b::int8[]) AS t(k, v, ts)
ON CONFLICT (board_id, user_key) DO UPDATE
    SET version = EXCLUDED.version, erased_at = EXCLUDED.erased_at
    WHERE score_erasures.version < EXCLUDED.version
"""
_ERASE_SCORES = """
DELETE FROM user_scores s USING unnest(%b::uuid[], %b::int8[]) AS t(u, v)
WHERE s.board_id = %b AND s.user_id = t.u AND s.version < t.v
"""
_ERASE_EVENTS = """
UPDATE score_events e SET user_id = NULL FROM unnest(%b::uuid[], %b::int8[]) AS t(u, v)
WHERE e.board_id = %b AND e.user_id = t.u AND e.seq < t.v
"""
# An event older than its user's erasure is stored without the user id; the
# tombstones of this batch are already written (same transaction, earlier statement).
_INSERT_EVENTS = f"""
INSERT INTO score_events
    (id, board_id, user_id, delta, nonce, source, score_after, created_at, seq, rank_after)
SELECT t.id, %b, CASE WHEN x.version >= t.q THEN NULL ELSE t.u END, t.d, t.n, t.src, t.s,
       {_TS.format("t.ts")}, t.q, t.r
FROM unnest(%b::uuid[], %b::uuid[], %b::bytea[], %b::int8[], %b::text[], %b::text[],
            %b::int8[], %b::int8[], %b::int8[], %b::int8[]) AS t(id, u, k, d, n, src, s, ts, q, r)
LEFT JOIN score_erasures x ON x.board_id = %b AND x.user_key = t.k
ON CONFLICT (id) DO NOTHING
"""
_UPSERT_SCORES = f"""
INSERT INTO user_scores (board_id, user_id, score, updated_at, version)
SELECT %b, t.u, t.s, {_TS.format("t.ts")}, t.v
FROM unnest(%b::uuid[], %b::bytea[], %b::int8[], %b::int8[], %b::int8[]) AS t(u, k, s, ts, v)
WHERE NOT EXISTS (
    SELECT 1 FROM score_erasures x WHERE x.board_id = %b AND x.user_key = t.k AND x.version >= t.v
)
ON CONFLICT (board_id, user_id) DO UPDATE
    SET score = EXCLUDED.score, updated_at = EXCLUDED.updated_at, version = EXCLUDED.version
    WHERE user_scores.version < EXCLUDED.version
"""


def _short(e: BaseException) -> str:
    """A one-line reason for logs and /readyz: the first line, at most 120 characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def redact(url: str) -> str:
    """The URL without its password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    user = str(params.get("user", ""))
    dbname = params.get("dbname", "")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


class PostgresStore(Store):
    """PostgreSQL through a psycopg 3 async connection pool."""

    kind = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout_s: float = 5.0,
    ) -> None:
        self._url = make_conninfo(
            url, application_name="scoreboard", connect_timeout=5, keepalives_idle=30
        )
        self._where = redact(url)
        self._timeout = timeout_s
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self._url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            name="scoreboard",
            check=AsyncConnectionPool.check_connection,
        )

    @property
    def where(self) -> str:
        return self._where

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except psycopg.Error as e:
            raise DatabaseUnavailable(_short(e)) from e

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.execute("SELECT 1")

    async def migrate(self) -> Migrated:
        # Its own connection: DDL holds locks, and the pool may not be open (CLI).
        try:
            async with await psycopg.AsyncConnection.connect(self._url) as conn:
                return await _migrate(conn)
        except psycopg.Error as e:
            raise DatabaseUnavailable(_short(e)) from e

    async def write(self, batch: Batch) -> None:
        board = batch.board
        erasures = batch.newest_erasures()
        # Erasures of this batch resolved here; stored ones by the statements' joins.
        events, rows = batch.resolve({e.user_id: e.seq for e in erasures})
        keys: dict[str, bytes] = {}
        for e in events:
            if e.user_id is not None and e.user_id not in keys:
                keys[e.user_id] = user_key(e.user_id)
        # One round trip for the whole transaction: every statement is pipelined.
        async with self._conn() as conn, conn.pipeline(), conn.transaction():
            # Batches of a board run side by side under the shared lock; an erasure
            # waits for them and holds later ones off, so no event of the erased
            # user can commit around it un-anonymised.
            lock = _LOCK_EXCLUSIVE if erasures else _LOCK_SHARED
            await conn.execute(lock, (LOCK_CLASS, board))
            if erasures:
                await _erase(conn, board, erasures)
            if events:
                await conn.execute(
                    _INSERT_EVENTS,
                    (
                        board,
                        [e.id for e in events],
                        [e.user_id for e in events],
                        [keys.get(e.user_id or "", b"") for e in events],
                        [e.delta for e in events],
                        [e.nonce for e in events],
                        [e.source for e in events],
                        [e.score for e in events],
                        [e.ts_ms for e in events],
                        [e.seq for e in events],
                        [e.rank for e in events],
                        board,
                    ),
                )
            if rows:
                await conn.execute(
                    _UPSERT_SCORES,
                    (
                        board,
                        [r.user_id for r in rows],
                        [keys[r.user_id] for r in rows],
                        [r.score for r in rows],
                        [r.ts_ms for r in rows],
                        [r.version for r in rows],
                        board,
                    ),
                )

    async def boards(self) -> list[str]:
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT board_id FROM user_scores GROUP BY board_id "
                "UNION SELECT board_id FROM score_erasures GROUP BY board_id"
            )
            return sorted(str(r[0]) for r in await cur.fetchall())

    def snapshot(self, board: str) -> AbstractAsyncContextManager[Snapshot]:
        return self._snapshot(board)

    @asynccontextmanager
    async def _snapshot(self, board: str) -> AsyncIterator[Snapshot]:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _PgSnapshot(conn, board)

    async def recent_nonces(
        self, boards: Sequence[str], since_ms: int, chunk: int
    ) -> AsyncIterator[list[NonceRow]]:
        sql = (
            f"SELECT board_id, nonce, id::text, score_after, rank_after, {_MS.format('created_at')}"
            f" FROM score_events WHERE created_at >= {_TS.format('%s')}"
            " AND board_id = ANY(%s) AND nonce IS NOT NULL"
        )
        async with self._conn() as conn, conn.transaction():
            async for rows in _chunks(conn, sql, (since_ms, list(boards)), chunk):
                yield [
                    NonceRow(b, n, i, int(s), None if r is None else int(r), int(c))
                    for b, n, i, s, r, c in rows
                ]

    async def scores_of(self, board: str, users: Sequence[str]) -> dict[str, int]:
        async with self._conn() as conn:
            cur = await conn.execute(
                "SELECT user_id::text, score FROM user_scores"
                " WHERE board_id = %s AND user_id = ANY(%s::uuid[])",
                (board, list(users)),
            )
            return {str(u): int(s) for u, s in await cur.fetchall()}


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> Migrated:
    async with conn.transaction():
        # Held to the end of the transaction: a second process waits here, then
        # finds the work done.
        await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, MIGRATE_LOCK_KEY))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS scoreboard_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM scoreboard_migrations")
        done = {int(r[0]) for r in await cur.fetchall()}
        applied: list[int] = []
        for m in MIGRATIONS:
            if m.version in done:
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO scoreboard_migrations (version, name) VALUES (%s, %s)",
                (m.version, m.name),
            )
            applied.append(m.version)
            logger.info("applied migration %d: %s", m.version, m.name)
    newest = max(done | set(applied), default=0)
    known = MIGRATIONS[-1].version
    if newest > known:
        logger.warning(
            "the database schema is at version %d, newer than this release knows (%d)",
            newest,
            known,
        )
    return Migrated(newest, tuple(applied))


async def _erase(conn: psycopg.AsyncConnection[Any], board: str, erasures: list[Erasure]) -> None:
    users = [e.user_id for e in erasures]
    seqs = [e.seq for e in erasures]
    await conn.execute(
        _ERASE_TOMBSTONES,
        (board, [user_key(u) for u in users], seqs, [e.ts_ms for e in erasures]),
    )
    await conn.execute(_ERASE_SCORES, (users, seqs, board))
    await conn.execute(_ERASE_EVENTS, (users, seqs, board))


async def _chunks(
    conn: psycopg.AsyncConnection[Any], sql: str, params: tuple[Any, ...], chunk: int
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Rows of a query through a server-side cursor (inside the caller's transaction)."""
    cur = conn.cursor(name=f"sb_{secrets.token_hex(4)}")
    try:
        await cur.execute(sql, params)
        while rows := await cur.fetchmany(chunk):
            yield rows
    finally:
        await cur.close()


class _PgSnapshot:
    def __init__(self, conn: psycopg.AsyncConnection[Any], board: str) -> None:
        self._conn = conn
        self._board = board

    async def scores(self, chunk: int) -> AsyncIterator[list[tuple[str, int, int]]]:
        sql = "SELECT user_id::text, score, version FROM user_scores WHERE board_id = %s"
        async for rows in _chunks(self._conn, sql, (self._board,), chunk):
            yield [(str(u), int(s), int(v)) for u, s, v in rows]

    async def ordered(self, chunk: int) -> AsyncIterator[list[tuple[str, int]]]:
        sql = (
            "SELECT user_id::text, score FROM user_scores WHERE board_id = %s"
            " ORDER BY score DESC, user_id"
        )
        async for rows in _chunks(self._conn, sql, (self._board,), chunk):
            yield [(str(u), int(s)) for u, s in rows]

    async def versions(self, users: Sequence[str]) -> dict[str, int]:
        cur = await self._conn.execute(
            "SELECT user_id::text, version FROM user_scores"
            " WHERE board_id = %s AND user_id = ANY(%s::uuid[])",
            (self._board, list(users)),
        )
        return {str(u): int(v) for u, v in await cur.fetchall()}

    async def count(self) -> int:
        cur = await self._conn.execute(
            "SELECT count(*) FROM user_scores WHERE board_id = %s", (self._board,)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def erased_version(self) -> int:
        cur = await self._conn.execute(
            "SELECT coalesce(max(version), 0) FROM score_erasures WHERE board_id = %s",
            (self._board,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0
