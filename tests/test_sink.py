"""The sink against the real Redis and PostgreSQL: commit, ack, trim, take-over, lag."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from scoreboard import keys
from scoreboard.board import Board
from scoreboard.persist.postgres import PostgresStore
from scoreboard.sink import Sink, board_lag, parse_entries

from .durable import FAST, db_totals, live_scores, pg, push, sink_for

EVENTS = keys.BoardKeys(keys.GLOBAL_BOARD).events


async def running(sink: Sink) -> asyncio.Task[None]:
    return asyncio.create_task(sink.run())


async def stop(sink: Sink, task: asyncio.Task[None]) -> None:
    sink.stop()
    await asyncio.wait_for(task, 10)


async def test_commits_acknowledges_and_trims(live: Board, db: PostgresStore, pg_url: str) -> None:
    users = [str(uuid.uuid4()) for _ in range(5)]
    for i in range(60):
        await push(live, users[i % 5], 1 + i % 4, board="global" if i % 3 else "season-1")
    sink = sink_for(live, db)
    task = await running(sink)
    try:
        assert await sink.drain(10)
        await asyncio.sleep(0.3)  # one more housekeeping round trims and measures
    finally:
        await stop(sink, task)
    totals = db_totals(pg_url)
    live_now = await live_scores(live, ["global", "season-1"])
    assert totals["events"] == totals["ids"] == totals["nonces"] == 60
    assert totals["sums"] == totals["scores"] == live_now
    for board in ("global", "season-1"):
        events = keys.BoardKeys(board).events
        assert (await live.client.xpending(events, keys.SINK_GROUP))["pending"] == 0
        assert await live.client.xlen(events) <= 1, "committed entries are trimmed"
    assert sink.committed == 60
    assert sink.metrics.sink_events._value.get() == 60
    assert sink.metrics.sink_lag._value.get() == 0


async def test_takes_over_entries_of_a_dead_consumer(
    live: Board, db: PostgresStore, pg_url: str
) -> None:
    user = str(uuid.uuid4())
    for _ in range(20):
        await push(live, user, 2)
    await live.client.xgroup_create(EVENTS, keys.SINK_GROUP, "0", mkstream=True)
    # A consumer reads everything, then dies before writing or acknowledging.
    got = await live.client.xreadgroup(keys.SINK_GROUP, "dead", {EVENTS: ">"}, count=100)
    assert len(got[0][1]) == 20
    sink = sink_for(live, db)
    task = await running(sink)
    try:
        assert await sink.drain(10)
    finally:
        await stop(sink, task)
    print(f"dead consumer: {sink.redelivered} entries taken over")
    assert sink.redelivered == 20
    assert db_totals(pg_url)["events"] == 20
    assert pg(pg_url, "SELECT score FROM user_scores") == [(40,)]
    assert (await live.client.xpending(EVENTS, keys.SINK_GROUP))["pending"] == 0


async def test_malformed_entries_are_skipped_not_stuck(
    live: Board, db: PostgresStore, pg_url: str
) -> None:
    user = str(uuid.uuid4())
    await push(live, user, 1)
    await live.client.xadd(EVENTS, {"k": "score", "u": "not-a-uuid"})
    await live.client.xadd(EVENTS, {"k": "mystery"})
    await push(live, user, 1)
    sink = sink_for(live, db)
    task = await running(sink)
    try:
        assert await sink.drain(10)
    finally:
        await stop(sink, task)
    assert db_totals(pg_url)["events"] == 2
    assert sink.committed == 4


def test_parse_entries() -> None:
    user, event = str(uuid.uuid4()), str(uuid.uuid4())
    fields = {
        b"k": b"score", b"e": event.encode(), b"u": user.encode(), b"d": b"5", b"s": b"9",
        b"r": b"2", b"n": b"n" * 16, b"src": b"bonus", b"q": b"7", b"ts": b"1000",
    }  # fmt: skip
    batch, ids, bad = parse_entries(
        "b",
        [
            (b"1-0", fields),
            (b"2-0", {b"k": b"erase", b"u": user.encode(), b"q": b"8", b"ts": b"2"}),
            (b"3-0", None),
        ],
    )
    assert (ids, bad) == ([b"1-0", b"2-0", b"3-0"], 0)
    (e,) = batch.events
    assert (e.id, e.user_id, e.delta, e.score, e.rank, e.source, e.seq) == (
        event,
        user,
        5,
        9,
        2,
        "bonus",
        7,
    )
    assert [(x.user_id, x.seq) for x in batch.erasures] == [(user, 8)]


async def test_no_trimming_while_a_reseed_runs(live: Board, db: PostgresStore) -> None:
    k = keys.BoardKeys(keys.GLOBAL_BOARD)
    await live.client.set(k.reseeding, "someone", px=60_000)
    user = str(uuid.uuid4())
    for _ in range(10):
        await push(live, user, 1)
    sink = sink_for(live, db)
    task = await running(sink)
    try:
        assert await sink.drain(10)
        await asyncio.sleep(0.3)
        assert await live.client.xlen(k.events) == 10, "kept while the reseed lock is held"
        await live.client.delete(k.reseeding)
        await asyncio.sleep(0.5)
        assert await live.client.xlen(k.events) <= 1
    finally:
        await stop(sink, task)


async def test_erasure_flows_to_the_database(live: Board, db: PostgresStore, pg_url: str) -> None:
    gone, stays = str(uuid.uuid4()), str(uuid.uuid4())
    for _ in range(3):
        await push(live, gone, 5)
        await push(live, stays, 1)
    erased = await live.erase(keys.GLOBAL_BOARD, gone)
    assert erased is not None and erased.top_changed
    sink = sink_for(live, db)
    task = await running(sink)
    try:
        assert await sink.drain(10)
    finally:
        await stop(sink, task)
    assert pg(pg_url, "SELECT user_id::text, score FROM user_scores") == [(stays, 3)]
    assert pg(pg_url, "SELECT count(*), count(user_id), sum(delta) FROM score_events") == [
        (6, 3, 18)
    ]
    assert pg(pg_url, "SELECT count(*) FROM score_events WHERE user_id = %s", gone) == [(0,)]


async def test_lag_is_reported_while_the_database_is_down(
    live: Board, unused_tcp_port: int
) -> None:
    down = PostgresStore(f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x", timeout_s=0.3)
    await down.open()
    user = str(uuid.uuid4())
    for _ in range(12):
        await push(live, user, 1)
    sink = sink_for(live, down, replace(FAST, retry_max_s=0.2))
    task = await running(sink)
    try:
        for _ in range(100):
            if sink.lag == 12:
                break
            await asyncio.sleep(0.05)
        assert sink.lag == 12
        assert sink.metrics.sink_lag._value.get() == 12
        assert sink.committed == 0
        # The increments themselves never wait for the database.
        await push(live, user, 1)
        assert await board_lag(live.client, keys.GLOBAL_BOARD) == 13
    finally:
        await stop(sink, task)
        await down.close()
