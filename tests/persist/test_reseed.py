"""Reseed: merging the stream, idempotence, versions, nonces, the lock, progress output."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import Any

import pytest

from scoreboard import keys
from scoreboard.board import Board
from scoreboard.persist.base import Batch, Event
from scoreboard.persist.postgres import PostgresStore
from scoreboard.persist.progress import Progress, Quiet
from scoreboard.persist.reseed import ReseedBusy, Reseeder

from ..durable import live_scores, push, sink_for

K = keys.BoardKeys(keys.GLOBAL_BOARD)


def reseeder(live: Board, db: PostgresStore, progress: Progress | None = None) -> Reseeder:
    return Reseeder(live.client, db, nonce_window_s=310, progress=progress or Quiet())


async def sink_once(live: Board, db: PostgresStore) -> None:
    sink = sink_for(live, db)
    task = asyncio.create_task(sink.run())
    assert await sink.drain(10)
    sink.stop()
    await task


async def test_merges_what_the_database_lacks(live: Board, db: PostgresStore) -> None:
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    for u in (a, b, c):
        await push(live, u, 10)
    await sink_once(live, db)
    # Written after the sink stopped: only the stream has these.
    await push(live, a, 5)
    await push(live, c, 1)
    await live.erase("global", b)
    before = await live_scores(live, ["global"])
    seq_before = int(await live.client.get(K.seq))
    version_before = (await live.snapshot("global")).version
    # Scramble the live board: the reseed must rebuild it from the database + stream.
    await live.client.zadd(K.scores, {a: -1000, b: -1000})
    (done,) = await reseeder(live, db).run()
    assert await live_scores(live, ["global"]) == before == {("global", a): 15, ("global", c): 11}
    assert done.from_stream == 3 and done.users == 2
    assert done.version > version_before and int(await live.client.get(K.seq)) > seq_before
    top = await live.snapshot("global")
    assert [(e.user_id, e.score, e.rank) for e in top.entries] == [(a, 15, 1), (c, 11, 2)]
    assert top.version == done.version
    assert not await live.client.exists(K.reseeding), "the lock is released"


async def test_reseed_twice_gives_the_same_board(live: Board, db: PostgresStore) -> None:
    users = [str(uuid.uuid4()) for _ in range(30)]
    for i, u in enumerate(users):
        await push(live, u, 1 + i % 3)
    await sink_once(live, db)
    before = await live_scores(live, ["global"])
    first = await reseeder(live, db).run()
    second = await reseeder(live, db).run()
    assert await live_scores(live, ["global"]) == before
    assert second[0].version > first[0].version, "versions only grow"


async def test_versions_move_past_the_database_after_data_loss(
    live: Board, db: PostgresStore
) -> None:
    user = str(uuid.uuid4())
    for _ in range(5):
        await push(live, user, 1)
    await sink_once(live, db)
    await live.client.flushdb()
    (done,) = await reseeder(live, db).run()
    assert done.version == 6, "past the newest stored version (5)"
    result = await push(live, user, 1)
    assert result.seq == 7 and result.score == 6


async def test_nonces_restored_only_while_their_tokens_live(live: Board, db: PostgresStore) -> None:
    user = str(uuid.uuid4())
    now = int(time.time() * 1000)

    def event(seq: int, ts: int) -> Event:
        return Event(
            str(uuid.uuid4()), user, 1, f"nonce-{seq}-" + "x" * 16, "score", seq, 3, seq, ts
        )

    fresh, stale = event(2, now - 5_000), event(1, now - 3_600_000)
    await db.write(Batch("global", [stale, fresh]))
    (done,) = await reseeder(live, db).run()
    assert done.nonces == 1
    assert await live.client.get(K.nonce(stale.nonce)) is None
    value = await live.client.get(K.nonce(fresh.nonce))
    assert value == f'{{"eventId":"{fresh.id}","score":2,"rank":3}}'.encode()
    ttl = await live.client.pttl(K.nonce(fresh.nonce))
    assert 0 < ttl <= (310 + 60) * 1000 - 5_000


async def test_a_second_reseed_of_a_board_is_refused(live: Board, db: PostgresStore) -> None:
    await push(live, str(uuid.uuid4()), 1)
    await live.client.set(K.reseeding, "other", px=60_000)
    with pytest.raises(ReseedBusy):
        await reseeder(live, db).run(["global"])
    assert await live.client.get(K.reseeding) == b"other", "another's lock is left alone"


def progress_text(tty: bool) -> str:
    out = io.StringIO()
    p = Progress(out, tty=tty)
    p.start("reseed global", 1000)
    for _ in range(10):
        p.advance(100)
    p.finish("1000 users")
    return out.getvalue()


def test_progress_bar_on_a_terminal_lines_otherwise() -> None:
    bar = progress_text(tty=True)
    draws = bar.split("\r")[1:-1]
    assert draws[0].startswith("reseed global [" + "." * 30 + "]   0% 0/1000")
    assert draws[-1].startswith("reseed global [" + "#" * 30 + "] 100% 1000/1000")
    assert len(draws) == 2, "redraws between are held back to ten a second"
    assert bar.endswith("\r\x1b[2Kreseed global: 1000 users\n")
    lines = progress_text(tty=False).splitlines()
    assert "\r" not in "".join(lines)
    assert lines[0] == "reseed global: 0/1000 (0%) 0.0s"
    assert lines[-2].startswith("reseed global: 1000/1000 (100%)")
    assert lines[-1] == "reseed global: 1000 users"
    assert len(lines) == 12


async def test_progress_is_shown_while_reseeding(live: Board, db: PostgresStore) -> None:
    out = io.StringIO()
    for _ in range(3):
        await push(live, str(uuid.uuid4()), 1)
    await sink_once(live, db)
    await reseeder(live, db, Progress(out, tty=False)).run()
    text: Any = out.getvalue()
    assert "reseed global: 3/3 (100%)" in text and "3 users" in text
