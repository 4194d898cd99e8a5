"""A cancelled sink ends even when Redis client code loses the cancellation.

Found by the model test (test_model.py, rule `restart_sink(crash=True)`): a
cancellation that lands inside a blocking XREADGROUP can come out of redis-py as
`ConnectionError("Connection closed by server.")`. The board loop retried it as a
Redis failure and ran on, so `Sink.run()` (and a server shutdown awaiting it) never
returned. Here the race is made certain: every blocking read turns a cancellation
into that error, or swallows it.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import redis.exceptions as rexc

from scoreboard import board as board_mod
from scoreboard.board import Board, RedisClient
from scoreboard.metrics import Metrics
from scoreboard.sink import Sink

from ..durable import FAST, pg_store, push


class LosesCancellations:
    """A Redis client whose blocking stream reads mishandle a cancellation."""

    def __init__(self, client: RedisClient, how: str) -> None:
        self._client = client
        self._how = how
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._client.xreadgroup(*args, **kwargs)
        except asyncio.CancelledError:
            self.lost += 1
            if self._how == "error":
                raise rexc.ConnectionError("Connection closed by server.") from None
            return []


@pytest.mark.parametrize("how", ["error", "swallow"])
async def test_cancelled_sink_ends(redis_url: str, pg_url: str, how: str) -> None:
    client = board_mod.connect(redis_url)
    store = await pg_store(pg_url)
    try:
        await push(Board(client, leeway_s=10, rate_limit_per_min=0), "0" * 8 + "-0000-4000-8000-" + "0" * 12, 1)  # fmt: skip
        wrapped = LosesCancellations(client, how)
        sink = Sink(cast(RedisClient, wrapped), store, Metrics(), FAST)
        task = asyncio.create_task(sink.run())
        assert await sink.drain(10)
        await asyncio.sleep(0.05)  # the board loops are now blocked in XREADGROUP
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            sink.stop()  # let it end by the flag, then fail
            await asyncio.wait({task}, timeout=5)
        assert done, "the cancelled sink is still running"
        assert task.cancelled()
        assert wrapped.lost >= 1, "no read was cancelled: the test did not test anything"
    finally:
        await store.close()
        await client.aclose()
