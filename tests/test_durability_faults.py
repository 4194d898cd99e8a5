"""The durability faults of issue 3, against the real Redis and PostgreSQL, each with its figure.

1. the worker kill -9'd and restarted under load: every accepted increment
   reaches PostgreSQL exactly once, through the recovery path;
2. PostgreSQL stopped while increments continue: none fails, lag grows then drains;
3. Redis loses its data, `reseed` brings back every score, rank and recent nonce;
4. (the same batch written twice: tests/persist/test_stores.py);
5. a reseed while increments continue: no difference after catch-up.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from redis.exceptions import ResponseError

from scoreboard import board as board_mod
from scoreboard import keys
from scoreboard.board import Board
from scoreboard.cli import main
from scoreboard.config import Settings
from scoreboard.http.app import create_app
from scoreboard.http.state import BOARD, SINK
from scoreboard.persist.postgres import PostgresStore
from scoreboard.sink import board_lag

from .conftest import AiohttpClient, Tokens, new_user, settings_with
from .durable import FAST, db_totals, live_scores, pg_store, sink_for
from .servers import PostgresServer, RedisServer, repo_root


class Load:
    """Increments through the HTTP API, remembering what was accepted."""

    def __init__(self, client: TestClient[Any, Any], tokens: Tokens, users: list[str]) -> None:
        self.client = client
        self.tokens = tokens
        self.users = users
        self.accepted: dict[tuple[str, str], int] = {}
        self.responses: list[tuple[dict[str, str], dict[str, Any], dict[str, Any], str]] = []
        self.ok = 0
        self.failed: list[int] = []

    async def one(self, user: str, delta: int, board: str = keys.GLOBAL_BOARD) -> None:
        prefix = "" if board == keys.GLOBAL_BOARD else f"/boards/{board}"
        headers, body = self.tokens.request(user, delta)
        r = await self.client.post(f"{prefix}/scores/increment", json=body, headers=headers)
        if r.status != 200:
            self.failed.append(r.status)
            return
        self.ok += 1
        self.accepted[(board, user)] = self.accepted.get((board, user), 0) + delta
        self.responses.append((headers, body, await r.json(), prefix))

    async def run(self, count: int, pause_s: float, boards: tuple[str, ...] = ("global",)) -> None:
        rng = random.Random(count)
        for i in range(count):
            await self.one(rng.choice(self.users), rng.randint(1, 50), boards[i % len(boards)])
            if pause_s:
                await asyncio.sleep(pause_s)


async def wait_lag(client: Any, boards: list[str], timeout_s: float) -> float:
    """Seconds until every board's stream is committed; fails after the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        lags = [await board_lag(client, b) for b in boards]
        if sum(lags) == 0:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"the sink did not drain within {timeout_s} s (lag {lags})")


def check_totals(pg_url: str, live: dict[tuple[str, str], int], load: Load) -> dict[str, Any]:
    totals = db_totals(pg_url)
    assert totals["events"] == load.ok, "every accepted increment is one event"
    assert totals["ids"] == totals["nonces"] == totals["events"], "no duplicate event"
    assert totals["sums"] == live == totals["scores"] == load.accepted
    return totals


# -- 1. kill -9 of the worker -----------------------------------------------------------


def start_worker(redis_url: str, pg_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "scoreboard", "worker",
                "--redis-url", redis_url, "--database-url", pg_url,
                "--claim-idle-ms", "300", "--block-ms", "100", "--batch-size", "50",
                "--log-format", "json",
            ],
            cwd=repo_root(), env=env, stdout=out, stderr=out,
        )  # fmt: skip


async def pending_of(client: Any, pid: int) -> int:
    try:
        summary = await client.xpending(keys.BoardKeys("global").events, keys.SINK_GROUP)
    except ResponseError as e:
        if "NOGROUP" in str(e):
            return 0  # a worker that is still starting has not made the group yet
        raise
    return sum(int(c["pending"]) for c in summary["consumers"] if f"-{pid}-" in c["name"].decode())


def redeliveries(logs: list[Path]) -> int:
    total = 0
    for log in logs:
        for line in log.read_bytes().splitlines():
            if line.startswith(b"{"):
                rec = orjson.loads(line)
                if rec.get("msg") == "claimed stale entries":
                    total += int(rec["entries"])
    return total


async def test_worker_kill_9_under_load(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    tokens: Tokens,
    redis_url: str,
    pg_url: str,
    tmp_path: Path,
) -> None:
    await (await pg_store(pg_url)).close()
    app = create_app(settings_with(settings, database_url=pg_url, rate_limit_per_min=0))
    client = await aiohttp_client(app)
    live = app[BOARD].client
    load = Load(client, tokens, [new_user() for _ in range(40)])
    logs = [tmp_path / "worker-0.log"]
    worker = start_worker(redis_url, pg_url, logs[0])
    kills = 0
    producers = asyncio.gather(*(load.run(500, 0.015) for _ in range(4)))
    try:
        await asyncio.sleep(1.0)
        for cycle in range(5):
            if producers.done():
                break
            held = await psycopg.AsyncConnection.connect(pg_url)
            try:
                if cycle % 2 == 0:
                    # Stall the worker's transaction so it dies holding a read batch.
                    await held.execute("LOCK TABLE user_scores IN EXCLUSIVE MODE")
                    for _ in range(100):
                        if await pending_of(live, worker.pid) > 0:
                            break
                        await asyncio.sleep(0.02)
                else:
                    await asyncio.sleep(random.uniform(0.05, 0.3))
                worker.send_signal(signal.SIGKILL)
                await asyncio.to_thread(worker.wait, 10)
                kills += 1
            finally:
                await held.rollback()
                await held.close()
            logs.append(tmp_path / f"worker-{len(logs)}.log")
            worker = start_worker(redis_url, pg_url, logs[-1])
            await asyncio.sleep(1.0)
        await producers
        drain_s = await wait_lag(live, ["global"], 60)
    finally:
        if not producers.done():
            producers.cancel()
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 15)
    assert code == 0, "SIGTERM stops the worker cleanly"
    pending = (await live.xpending(keys.BoardKeys("global").events, keys.SINK_GROUP))["pending"]
    totals = check_totals(pg_url, await live_scores(app[BOARD], ["global"]), load)
    again = redeliveries(logs)
    print(
        f"\nFIGURE kill -9: {kills} kills under {load.ok} accepted increments ->"
        f" {totals['events']} events, {totals['events'] - totals['ids']} duplicates,"
        f" {again} redelivered, {pending} pending, drained {drain_s:.1f} s after the load"
    )
    assert load.ok == 2000 and not load.failed
    assert kills >= 3
    assert again > 0, "the recovery path ran"
    assert pending == 0


# -- 2. PostgreSQL outage ----------------------------------------------------------------


async def test_postgres_outage(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens, redis_url: str
) -> None:
    server = PostgresServer().start()
    db: PostgresStore | None = None
    try:
        db = PostgresStore(server.url, timeout_s=1.0)
        await db.open()
        await db.migrate()
        app = create_app(settings_with(settings, database_url=server.url, rate_limit_per_min=0))
        client = await aiohttp_client(app)
        live: Board = app[BOARD]
        load = Load(client, tokens, [new_user() for _ in range(20)])
        sink = sink_for(live, db, replace(FAST, retry_max_s=0.3))
        task = asyncio.create_task(sink.run())
        try:
            await load.run(100, 0)
            await wait_lag(live.client, ["global"], 20)
            server.stop("fast")
            outage = time.monotonic()
            await asyncio.gather(*(load.run(75, 0.005) for _ in range(4)))
            peak = 0
            for _ in range(200):
                peak = max(peak, sink.lag)
                if peak >= 300:
                    break
                await asyncio.sleep(0.05)
            readyz = await client.get("/readyz")
            ready = await readyz.json()
            server.start()
            down_s = time.monotonic() - outage
            drain_s = await wait_lag(live.client, ["global"], 60)
            for _ in range(40):  # the gauge follows at the next housekeeping round
                if sink.metrics.sink_lag._value.get() == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            sink.stop()
            await asyncio.wait_for(task, 10)
        print(
            f"\nFIGURE postgres outage: {down_s:.1f} s down, {load.ok} accepted,"
            f" {len(load.failed)} failed, lag peak {peak}, drained {drain_s:.1f} s after restart"
        )
        assert not load.failed and load.ok == 400
        assert peak >= 300, "the lag grew while the database was down"
        assert readyz.status == 503 and ready["redis"] == "ok" and ready["database"] != "ok"
        assert sink.metrics.sink_lag._value.get() == 0
        check_totals_url(server.url, await live_scores(live, ["global"]), load)
    finally:
        if db is not None:
            await db.close()
        server.cleanup()


def check_totals_url(url: str, live: dict[tuple[str, str], int], load: Load) -> None:
    check_totals(url, live, load)


# -- 3. Redis data lost, then reseed -----------------------------------------------------


async def test_redis_flushall_then_reseed(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens, pg_url: str
) -> None:
    redis_server = RedisServer().start()
    try:
        url = redis_server.url
        app = create_app(
            settings_with(
                settings, redis_url=url, database_url=pg_url, rate_limit_per_min=0, sink=True
            )
        )
        client = await aiohttp_client(app)
        load = Load(client, tokens, [new_user() for _ in range(30)])
        await load.run(300, 0, boards=("global", "season-2"))
        assert await app[SINK].drain(20)

        async def board_state() -> dict[str, Any]:
            state: dict[str, Any] = {}
            for board, user in sorted(load.accepted):
                prefix = "" if board == "global" else f"/boards/{board}"
                r = await client.get(f"{prefix}/scores/{user}")
                state[f"{board}/{user}"] = (r.status, await r.json())
            for prefix in ("", "/boards/season-2"):
                r = await client.get(f"{prefix}/scores/top", params={"limit": "100"})
                state[f"top{prefix}"] = (await r.json())["entries"]
            return state

        before = await board_state()
        raw = aioredis.Redis.from_url(url)
        await raw.flushall()
        await raw.aclose()
        lost = await client.get(f"/scores/{load.users[0]}")
        assert lost.status == 404, "Redis really lost the board"

        args = ["--redis-url", url, "--database-url", pg_url]
        start = time.monotonic()
        assert await asyncio.to_thread(main, ["reseed", *args, "--no-progress-bar"]) == 0
        reseed_s = time.monotonic() - start
        for _ in range(50):  # the process's top cache follows the reseed's publish
            after = await board_state()
            if after == before:
                break
            await asyncio.sleep(0.05)
        differences = sum(after.get(k) != v for k, v in before.items())
        verify = await asyncio.to_thread(main, ["verify", *args, "--wait", "10"])
        headers, body, first, prefix = load.responses[-1]
        replay = await client.post(f"{prefix}/scores/increment", json=body, headers=headers)
        replay_body = await replay.json()
        print(
            f"\nFIGURE flushall + reseed: {len(before)} scores/tops compared, {differences}"
            f" differences, reseed {reseed_s:.2f} s, verify exit {verify},"
            f" replay of a recent nonce -> {replay.status}"
        )
        assert differences == 0
        assert verify == 0
        assert replay.status == 409
        assert replay_body["original"] == {k: first[k] for k in ("eventId", "score", "rank")}
    finally:
        redis_server.cleanup()


# -- 5. reseed while increments continue ---------------------------------------------------


async def test_reseed_while_increments_continue(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    tokens: Tokens,
    redis_url: str,
    pg_url: str,
    capsys: Any,
) -> None:
    app = create_app(settings_with(settings, database_url=pg_url, rate_limit_per_min=0, sink=True))
    client = await aiohttp_client(app)
    load = Load(client, tokens, [new_user() for _ in range(50)])
    args = ["--redis-url", redis_url, "--database-url", pg_url]
    await load.run(100, 0)
    producers = asyncio.gather(*(load.run(300, 0.004) for _ in range(4)))
    reseeds = []
    for _ in range(2):
        await asyncio.sleep(0.5)
        reseeds.append(await asyncio.to_thread(main, ["reseed", *args, "--no-progress-bar"]))
    during = load.ok
    await producers
    assert await app[SINK].drain(30)
    merged = sum(
        int(m.group(1))
        for m in re.finditer(r"(\d+) stream entries applied", capsys.readouterr().err)
    )
    verify = await asyncio.to_thread(main, ["verify", *args, "--wait", "10"])
    report = capsys.readouterr().out
    live = await live_scores(app[BOARD], ["global"])
    lost = {k: (v, live.get(k)) for k, v in load.accepted.items() if live.get(k) != v}
    print(report)
    print(
        f"\nFIGURE reseed under load: 2 reseeds while {load.ok} increments ran"
        f" ({during} before the second finished), {merged} uncommitted stream entries merged,"
        f" {len(lost)} differences, verify exit {verify}"
    )
    assert reseeds == [0, 0]
    assert merged > 0, "the reseeds had to merge entries the database did not have yet"
    assert not load.failed
    assert lost == {}, "every accepted delta is in the live board"
    assert verify == 0
    check_totals(pg_url, live, load)


async def test_verify_reports_drift(
    settings: Settings, redis_url: str, pg_url: str, capsys: Any
) -> None:
    client = board_mod.connect(redis_url)
    live = Board(client, leeway_s=10, rate_limit_per_min=0)
    db = await pg_store(pg_url)
    try:
        from .durable import push

        users = [new_user() for _ in range(3)]
        for u in users:
            await push(live, u, 5)
        sink = sink_for(live, db)
        task = asyncio.create_task(sink.run())
        assert await sink.drain(10)
        sink.stop()
        await task
        args = ["--redis-url", redis_url, "--database-url", pg_url, "--wait", "1"]
        assert await asyncio.to_thread(main, ["verify", *args]) == 0
        # Drift behind the sink's back: a score changed and a user added in Redis only.
        k = keys.BoardKeys("global")
        await client.zadd(k.scores, {users[0]: -99, "00000000-0000-4000-8000-000000000000": -1})
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["verify", *args]) == 1
        out = capsys.readouterr().out
        assert f"score differs: {users[0]} Redis 99 database 5" in out
        assert "only in Redis: 00000000-0000-4000-8000-000000000000 score 1" in out
        assert "DRIFT on 1 of 1 board(s), 2 difference(s)" in out
    finally:
        await db.close()
        await client.aclose()
