"""Helpers of the durability tests: increments through the store, database queries, and
the `live` (Board on the test Redis) and `db` (PostgreSQL store) fixtures."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from scoreboard import auth, keys
from scoreboard import board as board_mod
from scoreboard.board import Board, Increment
from scoreboard.metrics import Metrics
from scoreboard.persist.postgres import PostgresStore
from scoreboard.sink import Sink, SinkOptions

# Quick to react, for tests: short blocking reads and claim times.
FAST = SinkOptions(block_ms=100, claim_idle_ms=300, housekeeping_every_s=0.1, retry_max_s=0.5)


async def push(store: Board, user: str, delta: int, board: str = keys.GLOBAL_BOARD) -> Increment:
    """One accepted increment with a fresh nonce, straight through the Lua script."""
    nonce = secrets.token_urlsafe(18)
    return await store.increment(
        board, user, delta, nonce, auth.event_id(board, nonce), "score", int(time.time()) + 120
    )


def pg(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def db_totals(url: str) -> dict[str, Any]:
    """Event count, distinct ids and nonces, and per-user sums/scores, for comparisons."""
    ((count, ids, nonces),) = pg(
        url,
        "SELECT count(*), count(DISTINCT id), count(DISTINCT (board_id, nonce)) FROM score_events",
    )
    sums = {
        (b, str(u)): int(s)
        for b, u, s in pg(
            url, "SELECT board_id, user_id, sum(delta) FROM score_events GROUP BY 1, 2"
        )
    }
    scores = {
        (b, str(u)): int(s)
        for b, u, s in pg(url, "SELECT board_id, user_id, score FROM user_scores")
    }
    return {"events": count, "ids": ids, "nonces": nonces, "sums": sums, "scores": scores}


async def live_scores(store: Board, boards: list[str]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for b in boards:
        for member, score in await store.client.zrange(
            keys.BoardKeys(b).scores, 0, -1, withscores=True
        ):
            out[(b, member.decode())] = int(-score)
    return out


async def pg_store(url: str) -> PostgresStore:
    s = PostgresStore(url)
    await s.open()
    await s.migrate()
    return s


def sink_for(store: Board, db: Any, options: SinkOptions = FAST) -> Sink:
    return Sink(store.client, db, Metrics(), options)


@pytest.fixture
async def live(redis_url: str) -> AsyncIterator[Board]:
    client = board_mod.connect(redis_url)
    yield Board(client, leeway_s=10, rate_limit_per_min=0)
    await client.aclose()


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[PostgresStore]:
    store = await pg_store(pg_url)
    yield store
    await store.close()
