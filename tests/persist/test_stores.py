"""Both stores: migrations, idempotent batches, version ordering, erasure, snapshots."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from scoreboard.persist.base import Batch, Erasure, Event, Store
from scoreboard.persist.postgres import LOCK_CLASS, MIGRATE_LOCK_KEY, MIGRATIONS, PostgresStore
from scoreboard.persist.sqlite import SqliteStore

from ..servers import repo_root

BOARD = "global"
T0 = 1_800_000_000_000


def ev(user: str, seq: int, delta: int, score: int, *, nonce: str | None = None) -> Event:
    nonce = nonce or f"nonce-{seq:012d}-{user[:8]}"
    return Event(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{BOARD}/{nonce}")),
        user_id=user,
        delta=delta,
        nonce=nonce,
        source="score",
        score=score,
        rank=1,
        seq=seq,
        ts_ms=T0 + seq,
    )


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "postgresql":
        s = PostgresStore(request.getfixturevalue("pg_url"))
    else:
        s = SqliteStore.in_dir(tmp_path)
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def dump(store: Store) -> dict[str, Any]:
    """Every row of the three tables, for before/after comparisons."""
    if isinstance(store, PostgresStore):
        async with store._conn() as conn:
            out: dict[str, Any] = {}
            for table, order in (
                ("user_scores", "board_id, user_id"),
                ("score_events", "id"),
                ("score_erasures", "board_id, user_key"),
            ):
                cur = await conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
                out[table] = [tuple(str(v) for v in row) for row in await cur.fetchall()]
            return out
    assert isinstance(store, SqliteStore)

    def q(c: Any) -> dict[str, Any]:
        return {
            t: [tuple(str(v) for v in r) for r in c.execute(f"SELECT * FROM {t} ORDER BY 1, 2")]
            for t in ("user_scores", "score_events", "score_erasures")
        }

    return await store._writer.run(q)


async def scores(store: Store) -> dict[str, tuple[int, int]]:
    async with store.snapshot(BOARD) as snap:
        return {u: (s, v) async for rows in snap.scores(100) for u, s, v in rows}


async def test_migrate_is_idempotent(store: Store) -> None:
    again = await store.migrate()
    assert again.applied == ()
    assert again.version == MIGRATIONS[-1].version


def test_migrate_from_two_processes_at_once(pg_url: str) -> None:
    """Two `scoreboard migrate` processes racing on an empty database both succeed."""
    cmd = [sys.executable, "-m", "scoreboard", "migrate", "--database-url", pg_url]
    with psycopg.connect(pg_url, autocommit=True) as holder:
        # Hold the migration lock until both processes wait on it: a real race.
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, MIGRATE_LOCK_KEY))
        procs = [
            subprocess.Popen(cmd, cwd=repo_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
            if row and row[0] == 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the two migrate processes never both waited on the lock")
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, MIGRATE_LOCK_KEY))
    results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    outputs = [r[0].decode().strip() for r in results]
    print("migrate outputs:", outputs)
    assert [r[2] for r in results] == [0, 0], results
    assert sum("applied 1;" in o for o in outputs) == 1
    assert sum("already at version 1" in o for o in outputs) == 1
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version FROM scoreboard_migrations").fetchall()
    assert rows == [(1,)]


async def test_sqlite_migrate_concurrently(tmp_path: Path) -> None:
    # Three processes opening a new file at once: switching it to WAL used to fail with
    # "database is locked" about one time in twelve, so this tries twenty new files.
    for attempt in range(20):
        stores = [SqliteStore.in_dir(tmp_path / str(attempt)) for _ in range(3)]
        try:
            results = await asyncio.gather(*(s.migrate() for s in stores))
            assert sorted(len(r.applied) for r in results) == [0, 0, 1]
        finally:
            for s in stores:
                await s.close()


async def test_same_batch_twice_changes_nothing(store: Store) -> None:
    """Fault 4: a batch written again (a redelivery after a crash before XACK) is a no-op."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    batch = Batch(BOARD, [ev(a, 1, 5, 5), ev(b, 2, 3, 3), ev(a, 3, 2, 7)], [Erasure(b, 4, T0 + 4)])
    await store.write(batch)
    first = await dump(store)
    await store.write(batch)
    second = await dump(store)
    changed = sum(first[t] != second[t] for t in first)
    print(f"same batch twice ({store.kind}): {changed} tables changed")
    assert second == first
    assert await scores(store) == {a: (7, 3)}


async def test_scores_only_move_to_a_higher_version(store: Store) -> None:
    u = str(uuid.uuid4())
    await store.write(Batch(BOARD, [ev(u, 5, 10, 50)]))
    # An older batch arriving late (a claimed entry) leaves the row alone but logs the event.
    await store.write(Batch(BOARD, [ev(u, 3, 10, 30)]))
    assert await scores(store) == {u: (50, 5)}
    # An entry logged without a rank (older releases) is stored with a NULL rank.
    await store.write(Batch(BOARD, [ev(u, 6, 1, 51), replace(ev(u, 7, 1, 52), rank=None)]))
    assert await scores(store) == {u: (52, 7)}
    assert len((await dump(store))["score_events"]) == 4
    assert sum("None" in row for row in (await dump(store))["score_events"]) == 1


async def test_erasure_anonymises_and_wins_over_late_events(store: Store) -> None:
    u, other = str(uuid.uuid4()), str(uuid.uuid4())
    await store.write(Batch(BOARD, [ev(u, 1, 4, 4), ev(other, 2, 9, 9)]))
    await store.write(Batch(BOARD, [], [Erasure(u, 5, T0 + 5)]))
    # A late event from before the erasure: stored anonymised, no score row comes back.
    await store.write(Batch(BOARD, [ev(u, 3, 1, 5)]))
    assert await scores(store) == {other: (9, 2)}
    rows = (await dump(store))["score_events"]
    assert len(rows) == 3
    assert sum(u in r for r in rows) == 0, "the erased user's id is gone from every event"
    assert all(u not in str(r) for r in (await dump(store))["score_erasures"])
    # Playing again after the erasure starts a new, identified history.
    await store.write(Batch(BOARD, [ev(u, 8, 2, 2)]))
    assert await scores(store) == {other: (9, 2), u: (2, 8)}
    assert sum(u in r for r in (await dump(store))["score_events"]) == 1


async def test_erasure_in_the_same_batch_as_events(store: Store) -> None:
    u = str(uuid.uuid4())
    batch = Batch(BOARD, [ev(u, 1, 3, 3), ev(u, 3, 4, 4)], [Erasure(u, 2, T0 + 2)])
    await store.write(batch)
    assert await scores(store) == {u: (4, 3)}
    events = (await dump(store))["score_events"]
    assert sum(u in r for r in events) == 1


async def test_snapshot_reads(store: Store) -> None:
    users = sorted(str(uuid.uuid4()) for _ in range(5))
    batch = Batch(BOARD, [ev(u, i + 1, 10, 10) for i, u in enumerate(users)])
    batch.events.append(ev(users[4], 6, 5, 15))
    await store.write(batch)
    await store.write(Batch("other", [ev(users[0], 1, 1, 1)]))
    assert await store.boards() == ["global", "other"]
    async with store.snapshot(BOARD) as snap:
        assert await snap.count() == 5
        ordered = [row async for rows in snap.ordered(2) for row in rows]
        assert ordered == [(users[4], 15), *[(u, 10) for u in users[:4]]]
        assert await snap.versions([users[4], str(uuid.uuid4())]) == {users[4]: 6}
        assert await snap.erased_version() == 0
    assert await store.scores_of(BOARD, users[:2]) == {users[0]: 10, users[1]: 10}


async def test_recent_nonces(store: Store) -> None:
    u = str(uuid.uuid4())
    old, new = ev(u, 1, 1, 1), ev(u, 2, 1, 2)
    await store.write(Batch(BOARD, [old, new]))
    rows = [r async for chunk in store.recent_nonces([BOARD], T0 + 2, 10) for r in chunk]
    assert [(r.nonce, r.event_id, r.score, r.rank, r.created_ms) for r in rows] == [
        (new.nonce, new.id, 2, 1, T0 + 2)
    ]


async def test_ping_reports_an_unreachable_database(unused_tcp_port: int) -> None:
    from scoreboard.errors import DatabaseUnavailable

    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x", timeout_s=1)
    await store.open()
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            await store.ping()
        assert info.value.message and len(info.value.message) <= 120
    finally:
        await store.close()
