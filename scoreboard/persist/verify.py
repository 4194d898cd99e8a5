"""`scoreboard verify`: compare every board in Redis with the durable store.

Waits (bounded) for the sink to commit what the streams hold, then walks both
sides in board order (score descending, user id ascending) side by side, so
memory grows with the drift found, not with the board. Users that differ are
read again after a second short wait, so a change still in flight during the
walk is not reported as drift.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .. import keys
from ..board import RedisClient
from ..sink import board_lag, known_boards
from .base import Store

CHUNK = 10_000
# Differences remembered per board; beyond it only the count grows.
KEEP = 100_000
SHOWN = 20


@dataclass(slots=True)
class BoardDrift:
    """How one board differs between Redis and the database."""

    board: str
    redis_users: int = 0
    db_users: int = 0
    only_redis: dict[str, int] = field(default_factory=dict)
    only_db: dict[str, int] = field(default_factory=dict)
    differ: dict[str, tuple[int, int]] = field(default_factory=dict)
    uncounted: int = 0

    @property
    def differences(self) -> int:
        return len(self.only_redis) + len(self.only_db) + len(self.differ) + self.uncounted

    @property
    def agrees(self) -> bool:
        return self.differences == 0 and self.redis_users == self.db_users


@dataclass(slots=True)
class Report:
    """Every board's comparison, and whether the sink drained first."""

    boards: list[BoardDrift]
    drained: bool
    lag: int

    @property
    def agrees(self) -> bool:
        return all(b.agrees for b in self.boards)

    def write(self, out: TextIO) -> None:
        if not self.drained:
            out.write(f"verify: the sink did not drain in time ({self.lag} entries pending)\n")
        for b in self.boards:
            state = "agree" if b.agrees else f"{b.differences} difference(s)"
            out.write(
                f"verify: board {b.board}: {b.redis_users} users in Redis,"
                f" {b.db_users} in the database: {state}\n"
            )
            lines = [f"  only in Redis: {u} score {s}" for u, s in sorted(b.only_redis.items())]
            lines += [
                f"  only in the database: {u} score {s}" for u, s in sorted(b.only_db.items())
            ]
            lines += [
                f"  score differs: {u} Redis {r} database {d}"
                for u, (r, d) in sorted(b.differ.items())
            ]
            for line in lines[:SHOWN]:
                out.write(line + "\n")
            if len(lines) > SHOWN or b.uncounted:
                out.write(f"  … and {len(lines) - SHOWN + b.uncounted} more\n")
        bad = [b for b in self.boards if not b.agrees]
        if not self.boards:
            out.write("verify: no boards in Redis or the database\n")
        elif bad:
            total = sum(b.differences for b in bad)
            out.write(
                f"verify: DRIFT on {len(bad)} of {len(self.boards)} board(s), {total} difference(s)\n"
            )
        else:
            out.write(f"verify: OK, {len(self.boards)} board(s) agree\n")


async def wait_drained(client: RedisClient, boards: Sequence[str], timeout_s: float) -> int:
    """Wait until the sink committed every board's stream; the lag left (0 = drained)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lag = 0
        for board in boards:
            lag += await board_lag(client, board)
        if lag == 0 or time.monotonic() >= deadline:
            return lag
        await asyncio.sleep(0.1)


async def _redis_ordered(client: RedisClient, board: str) -> AsyncIterator[tuple[str, int]]:
    k = keys.BoardKeys(board)
    start = 0
    while True:
        rows = await client.zrange(k.scores, start, start + CHUNK - 1, withscores=True)
        for member, score in rows:
            yield member.decode() if isinstance(member, bytes) else str(member), int(-score)
        if len(rows) < CHUNK:
            return
        start += CHUNK


async def _flatten(chunks: AsyncIterator[list[tuple[str, int]]]) -> AsyncIterator[tuple[str, int]]:
    async for rows in chunks:
        for row in rows:
            yield row


def _order(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


async def _next(it: AsyncIterator[tuple[str, int]]) -> tuple[str, int] | None:
    try:
        return await anext(it)
    except StopAsyncIteration:
        return None


async def compare_board(client: RedisClient, store: Store, board: str) -> BoardDrift:
    """Walk the board in Redis and in the store side by side."""
    drift = BoardDrift(board)
    redis_side: dict[str, int] = {}
    db_side: dict[str, int] = {}

    def note(side: dict[str, int], item: tuple[str, int]) -> None:
        if len(redis_side) + len(db_side) < KEEP:
            side[item[0]] = item[1]
        else:
            drift.uncounted += 1

    async with store.snapshot(board) as snap:
        r_it = _redis_ordered(client, board)
        d_it = _flatten(snap.ordered(CHUNK))
        r, d = await _next(r_it), await _next(d_it)
        while r is not None or d is not None:
            if r is not None and d is not None and r == d:
                drift.redis_users += 1
                drift.db_users += 1
                r, d = await _next(r_it), await _next(d_it)
            elif d is None or (r is not None and _order(r) < _order(d)):
                assert r is not None
                drift.redis_users += 1
                note(redis_side, r)
                r = await _next(r_it)
            else:
                drift.db_users += 1
                note(db_side, d)
                d = await _next(d_it)
    for user, score in redis_side.items():
        if user in db_side:
            drift.differ[user] = (score, db_side[user])
        else:
            drift.only_redis[user] = score
    for user, score in db_side.items():
        if user not in redis_side:
            drift.only_db[user] = score
    return drift


async def _recheck(client: RedisClient, store: Store, drift: BoardDrift) -> None:
    """Read the differing users again; drop those that agree now."""
    users = sorted(drift.only_redis.keys() | drift.only_db.keys() | drift.differ.keys())
    if not users:
        return
    k = keys.BoardKeys(drift.board)
    live: dict[str, int] = {}
    stored: dict[str, int] = {}
    for i in range(0, len(users), CHUNK):
        part = users[i : i + CHUNK]
        scores: list[Any] = await client.zmscore(k.scores, part)
        live.update({u: int(-s) for u, s in zip(part, scores, strict=True) if s is not None})
        stored.update(await store.scores_of(drift.board, part))
    drift.only_redis.clear()
    drift.only_db.clear()
    drift.differ.clear()
    for user in users:
        r, d = live.get(user), stored.get(user)
        if r is not None and d is None:
            drift.only_redis[user] = r
        elif d is not None and r is None:
            drift.only_db[user] = d
        elif r is not None and d is not None and r != d:
            drift.differ[user] = (r, d)
    drift.redis_users = int(await client.zcard(k.scores))
    async with store.snapshot(drift.board) as snap:
        drift.db_users = await snap.count()


async def verify(
    client: RedisClient,
    store: Store,
    *,
    boards: Sequence[str] | None = None,
    wait_s: float = 30.0,
) -> Report:
    """Compare Redis and the store for the given boards (default: every board)."""
    if boards:
        chosen = sorted(set(boards))
    else:
        chosen = sorted(set(await store.boards()) | await known_boards(client))
    lag = await wait_drained(client, chosen, wait_s)
    drifts = [await compare_board(client, store, b) for b in chosen]
    if any(not d.agrees for d in drifts):
        lag = await wait_drained(client, chosen, min(wait_s, 5.0))
        for d in drifts:
            if not d.agrees:
                await _recheck(client, store, d)
    return Report(drifts, lag == 0, lag)
