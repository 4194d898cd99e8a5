"""increment.lua called directly through Board: each outcome, and what it writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from scoreboard import board as board_mod
from scoreboard import keys
from scoreboard.board import MAX_SCORE, Board, Increment, connect
from scoreboard.errors import InvalidDelta, RateLimited, Replay

from .conftest import new_user


@pytest.fixture(params=["connect", "connect-read_response", "from_url"])
async def rclient(
    redis_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """The service's own client (scripts batched on kept connections, replies read from
    hiredis, or through redis-py's read_response where that reader is not found), and a
    plain redis-py client (scripts batched through redis-py's Pipeline)."""
    if request.param == "connect-read_response":
        monkeypatch.setattr(board_mod, "_MORE", None)
    client = (
        aioredis.Redis.from_url(redis_url) if request.param == "from_url" else connect(redis_url)
    )
    yield client
    await client.aclose()


def make_board(client: Any, rate: int = 0) -> Board:
    return Board(client, leeway_s=10, rate_limit_per_min=rate)


async def inc(board: Board, user: str, delta: int, nonce: str, name: str = "b1") -> Increment:
    return await board.increment(
        name, user, delta, nonce, f"ev-{nonce}", "score", int(time.time()) + 60
    )


async def test_ok_writes_everything(rclient: Any) -> None:
    board = make_board(rclient)
    k = keys.BoardKeys("b1")
    user = new_user()
    pubsub = rclient.pubsub()
    await pubsub.subscribe(keys.channel("b1"))
    await pubsub.get_message(timeout=1)
    r = await board.increment(
        "b1", user, 12, "nonce-0000000001", "ev-1", "quest", int(time.time()) + 60
    )
    assert (r.score, r.rank, r.previous_rank, r.top_changed, r.seq) == (12, 1, None, True, 1)
    assert r.version == 1
    assert await rclient.zscore(k.scores, user) == -12
    nonce_value = orjson.loads(await rclient.get(k.nonce("nonce-0000000001")))
    assert nonce_value == {"eventId": "ev-1", "score": 12, "rank": 1}
    entries = await rclient.xrange(k.events)
    assert len(entries) == 1
    fields = {a.decode(): b.decode() for a, b in entries[0][1].items()}
    assert fields == {
        "k": "score", "e": "ev-1", "u": user, "d": "12", "s": "12", "r": "1",
        "n": "nonce-0000000001", "src": "quest", "q": "1", "ts": fields["ts"],
    }  # fmt: skip
    top = await rclient.hgetall(k.top)
    assert orjson.loads(top[b"d"]) == [[user, 12]] and top[b"v"] == b"1"
    msg = None
    for _ in range(10):
        msg = await pubsub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            break
    assert msg is not None
    published = orjson.loads(msg["data"])
    assert published == {
        "type": "score", "boardId": "b1", "userId": user, "score": 12, "rank": 1,
        "previousRank": None, "delta": 12, "eventId": "ev-1", "version": 1, "topChanged": True,
        "ts": published["ts"],
    }  # fmt: skip
    await pubsub.aclose()


async def test_replay_returns_first_result(rclient: Any) -> None:
    board = make_board(rclient)
    user = new_user()
    await inc(board, user, 5, "n" * 16)
    with pytest.raises(Replay) as e:
        await inc(board, user, 7, "n" * 16)
    assert e.value.original == {"eventId": "ev-" + "n" * 16, "score": 5, "rank": 1}
    assert await rclient.zscore("sb:{b1}:scores", user) == -5
    assert await rclient.xlen("sb:{b1}:events") == 1


async def test_rate_limited_consumes_nothing(rclient: Any) -> None:
    board = make_board(rclient, rate=2)
    user = new_user()
    await inc(board, user, 1, "a" * 16)
    await inc(board, user, 1, "b" * 16)
    with pytest.raises(RateLimited) as e:
        await inc(board, user, 1, "c" * 16)
    assert 1 <= e.value.retry_after_s <= 61
    assert await rclient.exists("sb:{b1}:nonce:" + "c" * 16) == 0
    assert await rclient.xlen("sb:{b1}:events") == 2
    await inc(board, new_user(), 1, "d" * 16)  # other users unaffected


async def test_score_bound(rclient: Any) -> None:
    board = make_board(rclient)
    user = new_user()
    await inc(board, user, MAX_SCORE, "a" * 16)
    with pytest.raises(InvalidDelta):
        await inc(board, user, 1, "b" * 16)
    low = new_user()
    await inc(board, low, -MAX_SCORE, "c" * 16)
    with pytest.raises(InvalidDelta):
        await inc(board, low, -1, "d" * 16)
    assert await rclient.exists("sb:{b1}:nonce:" + "b" * 16) == 0
    entry = await board.user("b1", user)
    assert entry is not None and entry.score == MAX_SCORE and entry.rank == 1
    entry = await board.user("b1", low)
    assert entry is not None and entry.score == -MAX_SCORE and entry.rank == 2


async def test_ranks_and_previous_rank(rclient: Any) -> None:
    board = make_board(rclient)
    a, b, c = sorted(new_user() for _ in range(3))
    await inc(board, a, 10, "1" * 16)
    await inc(board, b, 10, "2" * 16)
    r = await inc(board, c, 5, "3" * 16)
    assert r.rank == 3
    r = await inc(board, c, 5, "4" * 16)
    assert (r.rank, r.previous_rank) == (1, 3)
    r = await inc(board, c, 1, "5" * 16)
    assert (r.rank, r.previous_rank) == (1, 1)
    _, entries = await board.page("b1", 0, 10)
    assert [(e.user_id, e.score, e.rank) for e in entries] == [(c, 11, 1), (a, 10, 2), (b, 10, 2)]


async def test_top_snapshot_untouched_outside_top_100(rclient: Any) -> None:
    board = make_board(rclient)
    users = [new_user() for _ in range(101)]
    for i, user in enumerate(users):
        await inc(board, user, 1000 - i, f"{i:016d}")
    k = keys.BoardKeys("b1")
    before = await rclient.hgetall(k.top)
    r = await inc(board, users[100], -5, "x" * 16)
    assert r.top_changed is False
    assert await rclient.hgetall(k.top) == before
    r = await inc(board, users[99], 1, "y" * 16)
    after = await rclient.hgetall(k.top)
    assert int(after[b"v"]) > int(before[b"v"])
    assert r.top_changed is False  # 100th is outside the top-10


async def test_atomic_under_concurrency(rclient: Any) -> None:
    board = make_board(rclient)
    user = new_user()
    results = await asyncio.gather(
        *(inc(board, user, 3, "same-nonce-000000") for _ in range(20)), return_exceptions=True
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 1
    assert all(isinstance(r, Replay) for r in results if isinstance(r, BaseException))
    assert await rclient.zscore("sb:{b1}:scores", user) == -3


async def test_noscript_after_script_flush(rclient: Any) -> None:
    board = make_board(rclient)
    user = new_user()
    await inc(board, user, 1, "f" * 16)
    await rclient.script_flush()
    results = await asyncio.gather(*(inc(board, user, 1, f"{i:016d}") for i in range(5)))
    assert len(results) == 5
    assert await rclient.zscore("sb:{b1}:scores", user) == -6


async def test_board_set_heals_after_data_loss(
    rclient: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = make_board(rclient)
    await inc(board, new_user(), 1, "g" * 16, name="healing")
    assert await rclient.smembers(keys.BOARDS_KEY) == {b"healing"}
    await rclient.delete(keys.BOARDS_KEY)
    await inc(board, new_user(), 1, "h" * 16, name="healing")
    assert await rclient.smembers(keys.BOARDS_KEY) == set()  # remembered for a while
    monkeypatch.setattr(board_mod, "REGISTER_EVERY_S", 0.0)
    await inc(board, new_user(), 1, "i" * 16, name="healing")
    assert await rclient.smembers(keys.BOARDS_KEY) == {b"healing"}


async def test_the_top_channel_hears_only_top_100_changes(rclient: Any) -> None:
    board = make_board(rclient)
    name = f"top-{new_user()[:8]}"
    k = keys.BoardKeys(name)
    await rclient.zadd(k.scores, {new_user(): -(1000 + i) for i in range(100)})
    pubsub = rclient.pubsub()
    await pubsub.subscribe(keys.top_channel(name), keys.channel(name))
    for _ in range(2):
        await pubsub.get_message(timeout=1)

    async def published() -> list[tuple[str, dict[str, Any]]]:
        out = []
        while (msg := await pubsub.get_message(timeout=0.3)) is not None:
            if msg["type"] == "message":
                out.append((msg["channel"].decode(), orjson.loads(msg["data"])))
        return out

    user = new_user()
    # Below the 100th score: the contract's channel hears it, the top channel does not.
    outside = await inc(board, user, 5, "nonce-top-000001", name)
    assert [c for c, _ in await published()] == [keys.channel(name)]
    inside = await inc(board, user, 5000, "nonce-top-000002", name)
    got = dict(await published())
    assert got[keys.top_channel(name)] == {
        "type": "top", "boardId": name, "version": inside.seq, "topChanged": True,
        "ts": got[keys.top_channel(name)]["ts"],
    }  # fmt: skip
    assert got[keys.channel(name)]["type"] == "score"
    assert outside.version == 0
    await pubsub.aclose()


async def test_a_tie_at_the_100th_place_is_ordered_by_user_id(rclient: Any) -> None:
    """Rank 1 is not always inside the top-100: among 101 tied users the one with the
    largest id sits at position 100, and only the position decides what the top holds."""
    board = make_board(rclient)
    name = f"ties-{new_user()[:8]}"
    k = keys.BoardKeys(name)
    smallest = "00000000-0000-4000-8000-000000000000"
    largest = "ffffffff-ffff-4fff-bfff-ffffffffffff"
    for i in range(100):
        await inc(board, new_user(), 10, f"tie-{i:012d}", name)
    before = await rclient.hgetall(k.top)
    last = await inc(board, largest, 10, "tie-largest-0000", name)
    assert (last.rank, last.top_changed, last.version) == (1, False, int(before[b"v"]))
    assert await rclient.hgetall(k.top) == before
    first = await inc(board, smallest, 10, "tie-smallest-000", name)
    assert (first.rank, first.top_changed) == (1, True)
    after = await rclient.hgetall(k.top)
    assert int(after[b"v"]) == first.version > int(before[b"v"])
    top = orjson.loads(after[b"d"])
    assert top[0] == [smallest, 10] and len(top) == 100 and [largest, 10] not in top
    # The largest id moves up from position 101 by a point: into the top, at its head.
    up = await inc(board, largest, 1, "tie-largest-0001", name)
    assert (up.rank, up.previous_rank, up.top_changed) == (1, 1, True)
    assert orjson.loads((await rclient.hgetall(k.top))[b"d"])[0] == [largest, 11]
