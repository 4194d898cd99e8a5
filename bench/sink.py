"""Sink benchmark: stream -> PostgreSQL throughput, lag at a steady rate, reseed time.

Starts a throwaway redis-server and creates a throwaway database on the given
PostgreSQL server (dropped at the end), then measures:

1. throughput: a backlog of `--events` stream entries drained by one sink
   (events per second, from the first read to an empty stream);
2. steady lag: increments through increment.lua at `--rate` per second for
   `--seconds`, from a separate process, while one sink drains them; the lag of
   every event is its commit time minus the time increment.lua logged it
   (p50 / p99 / max);
3. reseed: `--users` rows in user_scores rebuilt into an empty Redis.

Writes the figures to bench/results/sink.json (or --out). Run from the repository
root: `.venv/bin/python bench/sink.py --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoreboard import auth, keys  # noqa: E402
from scoreboard import board as board_mod  # noqa: E402
from scoreboard.metrics import Metrics  # noqa: E402
from scoreboard.persist.base import Batch  # noqa: E402
from scoreboard.persist.postgres import PostgresStore  # noqa: E402
from scoreboard.persist.progress import Progress  # noqa: E402
from scoreboard.persist.reseed import Reseeder  # noqa: E402
from scoreboard.sink import Sink, SinkOptions, board_lag  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

BOARD = keys.GLOBAL_BOARD
K = keys.BoardKeys(BOARD)


class TimedStore(PostgresStore):
    """Records, for every committed event, how long after its logging it was committed."""

    def __init__(self, url: str) -> None:
        super().__init__(url, max_size=2)
        self.lags_ms: list[int] = []

    async def write(self, batch: Batch) -> None:
        await super().write(batch)
        now = int(time.time() * 1000)
        self.lags_ms.extend(now - e.ts_ms for e in batch.events)


def pct(values: list[int], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))])


async def fill_stream(client: Any, events: int, users: int) -> None:
    """A backlog of well-formed entries, written straight to the stream."""
    ids = [str(uuid.uuid4()) for _ in range(users)]
    now = int(time.time() * 1000)
    scores = [0] * users
    pipe = client.pipeline(transaction=False)
    for seq in range(1, events + 1):
        i = seq % users
        scores[i] += 1
        nonce = secrets.token_urlsafe(18)
        pipe.xadd(
            K.events,
            {
                "k": "score", "e": auth.event_id(BOARD, nonce), "u": ids[i], "d": 1,
                "s": scores[i], "r": 1, "n": nonce, "src": "score", "q": seq, "ts": now,
            },
        )  # fmt: skip
        if seq % 2000 == 0:
            await pipe.execute()
    await pipe.execute()
    await client.sadd(keys.BOARDS_KEY, BOARD)


async def run_sink_until_drained(client: Any, store: PostgresStore, timeout_s: float) -> float:
    sink = Sink(client, store, Metrics(), SinkOptions(block_ms=50))
    start = time.perf_counter()
    task = asyncio.create_task(sink.run())
    try:
        while time.perf_counter() - start < timeout_s:
            if await board_lag(client, BOARD) == 0:
                break
            await asyncio.sleep(0.01)
        return time.perf_counter() - start
    finally:
        sink.stop()
        await task


async def throughput(redis_url: str, db_url: str, events: int, users: int) -> dict[str, Any]:
    client = board_mod.connect(redis_url)
    store = PostgresStore(db_url, max_size=2)
    await store.open()
    await store.migrate()
    try:
        await client.flushdb()
        await fill_stream(client, events, users)
        seconds = await run_sink_until_drained(client, store, 600)
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT count(*) FROM score_events").fetchone()
        stored = int(row[0]) if row else 0
        return {
            "events": events,
            "users": users,
            "stored": stored,
            "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds),
        }
    finally:
        await client.aclose()
        await store.close()


def produce(redis_url: str, rate: int, seconds: float, users: int, result: Any) -> None:
    """A separate process sending increments through increment.lua at a steady rate."""

    async def go() -> None:
        client = board_mod.connect(redis_url)
        live = board_mod.Board(client, leeway_s=10, rate_limit_per_min=0)
        ids = [str(uuid.uuid4()) for _ in range(users)]
        sent = 0
        start = time.perf_counter()
        exp = int(time.time()) + 600

        async def one(i: int) -> None:
            nonce = secrets.token_urlsafe(18)
            await live.increment(
                BOARD, ids[i % users], 1, nonce, auth.event_id(BOARD, nonce), "score", exp
            )

        # Ticks of 10 ms, each sending its share concurrently: a steady offered load.
        tick = 0.01
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(rate * (elapsed + tick)) - sent
            if due > 0:
                await asyncio.gather(*(one(sent + j) for j in range(due)))
                sent += due
            await asyncio.sleep(max(0.0, start + (elapsed + tick) - time.perf_counter()))
        result["sent"] = sent
        result["seconds"] = time.perf_counter() - start
        await client.aclose()

    asyncio.run(go())


async def steady(
    redis_url: str, db_url: str, rate: int, seconds: float, users: int
) -> dict[str, Any]:
    client = board_mod.connect(redis_url)
    store = TimedStore(db_url)
    await store.open()
    await store.migrate()
    await client.flushdb()
    await client.sadd(keys.BOARDS_KEY, BOARD)
    sink = Sink(client, store, Metrics(), SinkOptions(block_ms=50))
    task = asyncio.create_task(sink.run())
    manager = multiprocessing.Manager()
    result = manager.dict()
    proc = multiprocessing.get_context("spawn").Process(
        target=produce, args=(redis_url, rate, seconds, users, result)
    )
    try:
        await asyncio.sleep(0.5)
        proc.start()
        await asyncio.to_thread(proc.join)
        for _ in range(3000):  # at most a minute for the last entries
            if not await board_lag(client, BOARD):
                break
            await asyncio.sleep(0.02)
    finally:
        sink.stop()
        await task
        await client.aclose()
        await store.close()
    sent = int(result.get("sent", 0))
    took = float(result.get("seconds", seconds))
    lags = store.lags_ms
    return {
        "target_rate": rate,
        "achieved_rate": round(sent / took) if took else 0,
        "seconds": round(took, 2),
        "events": sent,
        "committed": len(lags),
        "lag_ms_p50": pct(lags, 50),
        "lag_ms_p99": pct(lags, 99),
        "lag_ms_max": float(max(lags, default=0)),
    }


async def reseed(redis_url: str, db_url: str, users: int) -> dict[str, Any]:
    store = PostgresStore(db_url, max_size=2)
    await store.open()
    await store.migrate()
    with psycopg.connect(db_url) as conn:
        conn.execute("DELETE FROM user_scores WHERE board_id = %s", (BOARD,))
        with conn.cursor().copy(
            "COPY user_scores (board_id, user_id, score, updated_at, version) FROM STDIN"
        ) as copy:
            now = datetime.now(UTC)
            for i in range(users):
                copy.write_row((BOARD, uuid.uuid4(), (i * 7919) % 1_000_003, now, i + 1))
        conn.execute("ANALYZE user_scores")
    client = board_mod.connect(redis_url)
    try:
        await client.flushdb()
        start = time.perf_counter()
        reseeder = Reseeder(client, store, nonce_window_s=310, progress=Progress())
        (done,) = await reseeder.run([BOARD])
        seconds = time.perf_counter() - start
        assert done.users == users, (done.users, users)
        return {
            "users": users,
            "nonces": done.nonces,
            "seconds": round(seconds, 2),
            "users_per_s": round(users / seconds),
        }
    finally:
        await client.aclose()
        await store.close()


def database(admin_url: str) -> tuple[str, str]:
    name = f"sb_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return name, f"{base}/{name}"


def drop(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server to create the throwaway database on",
    )
    parser.add_argument("--events", type=int, default=200_000, help="backlog to drain (phase 1)")
    parser.add_argument("--users", type=int, default=10_000, help="distinct users of phases 1-2")
    parser.add_argument("--rate", type=int, default=5_000, help="increments per second (phase 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of phase 2")
    parser.add_argument(
        "--reseed-users", type=int, default=1_000_000, help="users to reseed (phase 3)"
    )
    parser.add_argument(
        "--skip", action="append", default=[], choices=["throughput", "steady", "reseed"]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sink.json")
    args = parser.parse_args()

    redis = RedisServer().start()
    name, db_url = database(args.pg_admin_url)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "pg_admin_url")},
    }
    try:
        if "throughput" not in args.skip:
            results["throughput"] = asyncio.run(
                throughput(redis.url, db_url, args.events, args.users)
            )
            print("throughput:", results["throughput"], flush=True)
        if "steady" not in args.skip:
            results["steady"] = asyncio.run(
                steady(redis.url, db_url, args.rate, args.seconds, args.users)
            )
            print("steady:", results["steady"], flush=True)
        if "reseed" not in args.skip:
            results["reseed"] = asyncio.run(reseed(redis.url, db_url, args.reseed_users))
            print("reseed:", results["reseed"], flush=True)
    finally:
        redis.cleanup()
        drop(args.pg_admin_url, name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
