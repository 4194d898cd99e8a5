"""The Redis client: hiredis packing gives redis-py's bytes; batched scripts survive restarts."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from redis.asyncio.connection import Connection

from scoreboard.board import MAX_IDLE_CONNECTIONS, SEND_AT, Board, connect, hiredis_packing
from scoreboard.errors import Replay, StoreUnavailable

from .servers import RedisServer


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "v"),
        ("EVALSHA", "ab" * 20, 2, "sb:{b}:x", "sb:{b}:y", -5, 9007199254740991, 1.5, "é"),
        ("SCRIPT LOAD", "return 1"),
        (b"CONFIG GET", b"maxmemory-policy"),
        ("XADD", "s", "*", "k", b"\x00\xff"),
    ],
)
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    plain = Connection()
    fast = hiredis_packing(Connection)()
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


async def test_connect_uses_it(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
    finally:
        await client.aclose()


async def test_scripts_keep_working_across_a_redis_restart() -> None:
    """The connections the script batcher keeps go stale when Redis restarts: the first
    batch after it is sent again on a fresh connection instead of failing."""
    server = RedisServer().start()
    client = connect(server.url)
    board = Board(client, leeway_s=10, rate_limit_per_min=0)
    exp = int(time.time()) + 60
    try:
        batcher = board._calls[board._increment]
        assert batcher._pool is not None, "the service's client takes the kept-connection path"
        user = str(uuid.uuid4())
        results = await asyncio.gather(
            *(
                board.increment("b", user, 1, f"nonce-{i:010d}", f"e{i}", "s", exp)
                for i in range(20)
            )
        )
        assert sorted(r.score for r in results) == list(range(1, 21))
        assert 1 <= len(batcher._idle) <= MAX_IDLE_CONNECTIONS
        server.stop()
        server.start()
        # Redis came back empty (no persistence): the board starts again from nothing.
        again = await board.increment("b", user, 5, "nonce-after-restart", "e-r", "s", exp)
        assert (again.score, again.rank) == (5, 1)
        with pytest.raises(Replay):
            await board.increment("b", user, 5, "nonce-after-restart", "e-r", "s", exp)
        server.stop()
        with pytest.raises(StoreUnavailable):
            await board.increment("b", user, 5, "nonce-while-down", "e-d", "s", exp)
    finally:
        await client.aclose()
        server.stop()
        server.cleanup()


async def test_a_busy_turn_goes_out_in_parts_and_survives_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past SEND_AT calls in one turn, the batcher writes the queued calls at once on a kept
    connection; every call still gets its own reply, also when that connection went stale."""
    server = RedisServer().start()
    client = connect(server.url)
    board = Board(client, leeway_s=10, rate_limit_per_min=0)
    batcher = board._calls[board._increment]
    early: list[int] = []
    send_now = batcher._send_now

    def counting() -> bool:
        queued = len(batcher._queue)
        sent = send_now()
        if sent:
            early.append(queued)
        return sent

    monkeypatch.setattr(batcher, "_send_now", counting)
    exp = int(time.time()) + 60
    users = [str(uuid.uuid4()) for _ in range(5 * SEND_AT)]

    async def turn(tag: str) -> list[Any]:
        return await asyncio.gather(
            *(
                board.increment("b", u, i + 1, f"nonce-{tag}-{i:08d}", f"e-{tag}-{i}", "s", exp)
                for i, u in enumerate(users)
            )
        )

    try:
        for tag in ("a", "b", "c"):
            results = await turn(tag)
        assert early and all(n == SEND_AT for n in early), early
        # Three turns of the same deltas: each reply is its own user's, with three times
        # that user's delta, and the board holds exactly that (scores stored negated).
        assert [r.score for r in results] == [3 * (i + 1) for i in range(len(users))]
        assert [r.user_id for r in results] == users
        stored = await client.zmscore(board.keys("b").scores, users)
        assert [-int(x) for x in stored] == [3 * (i + 1) for i in range(len(users))]
        kept = len(batcher._idle)
        assert kept >= 2
        server.stop()
        server.start()
        early.clear()
        results = await turn("after-restart")
        assert early, "the kept connections were used, stale as they were"
        assert [r.score for r in results] == [i + 1 for i in range(len(users))]
    finally:
        await client.aclose()
        server.stop()
        server.cleanup()
