"""Board size: increment latency and Redis memory per user with 1k, 1M and 10M users.

    .venv/bin/python bench/boardsize.py [--sizes 1000,1000000,10000000] [--seconds 5]

Each size gets a fresh Redis, filled through `redis-cli --pipe` (ZADD of 1,000 members a
command, scores stored negated as the service stores them), then `scoreboard serve` takes
increments of existing users at a moderate closed-loop load (wrk, 8 connections): the
same 1,000 users at every size, after a 2-second warm-up. The smallest size runs again
at the end, to show how far the machine's speed drifted during the run.

Last, a sorted set of 1,000,000 members of 16 raw bytes each (a UUID's bytes, the
shortest name unique for every user) is filled the same way and measured: the least
memory per user that any layout with one sorted-set entry per user can reach on this
Redis, against the service's 36-character members.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from common import make_requests, md_table, redis_server, scoreboard_serve, write_results, wrk


def _resp(*parts: str | bytes) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _member(i: int) -> str | bytes:
    return str(uuid.UUID(int=i + 1))


def fill(redis_url: str, users: int, chunk: int = 1000, member: Any = _member) -> float:
    """ZADD `users` users (named by `member(i)`) into the global board; returns seconds
    taken."""
    port = redis_url.split(":")[2].split("/")[0]
    rng = random.Random(1)
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["redis-cli", "-p", port, "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert proc.stdin is not None
    for base in range(0, users, chunk):
        parts: list[str | bytes] = ["ZADD", "sb:{global}:scores"]
        for i in range(base, min(users, base + chunk)):
            parts += [str(-rng.randint(0, 1_000_000)), member(i)]
        proc.stdin.write(_resp(*parts))
    proc.stdin.close()
    proc.wait()
    return time.perf_counter() - start


ACTIVE_USERS = 1000
WARMUP_S = 2
REQUESTS_PER_S = 25_000


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,1000000,10000000")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument(
        "--floor-users",
        type=int,
        default=1_000_000,
        help="also measure a sorted set of that many 16-byte members (0: skip)",
    )
    args = ap.parse_args()
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    sizes = [int(s) for s in args.sizes.split(",")]
    # The smallest board once more at the end: how far the machine drifted meanwhile.
    for size in [*sizes, sizes[0]]:
        with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmpdir, redis_server() as redis_url:
            client = redis.Redis.from_url(redis_url)
            base_mem = int(client.info("memory")["used_memory"])
            took = fill(redis_url, size)
            assert client.zcard("sb:{global}:scores") == size
            per_user = (int(client.info("memory")["used_memory"]) - base_mem) / size
            # The same active users at every size, warmed up first (their tokens verified
            # once, the script loaded): what differs between sizes is the board alone.
            users = min(size, ACTIVE_USERS)
            # Enough distinct requests for a fast minute: wrk replays the file from the
            # top when it runs out, and replays would be timed as cheap 409s.
            warm = make_requests(REQUESTS_PER_S * WARMUP_S, users, "/scores/increment",
                                 Path(tmpdir) / "warm.tsv")  # fmt: skip
            reqs = make_requests(REQUESTS_PER_S * args.seconds, users, "/scores/increment",
                                 Path(tmpdir) / "req.tsv")  # fmt: skip
            with scoreboard_serve(redis_url) as port:
                url = f"http://127.0.0.1:{port}/scores/increment"
                wrk(url, WARMUP_S, 8, warm)
                r = wrk(url, args.seconds, 8, reqs)
            client.close()
        if r.non2xx:
            print(f"WARNING: {r.non2xx} non-2xx responses at {size:,} users: not a clean run")
        results.append({"users": size, "fill_s": took, "bytes_per_user": per_user, **r.as_dict()})
        rows.append([f"{size:,}", per_user, r.rps, r.p50_ms, r.p99_ms, r.non2xx])
        print(rows[-1])
    base = results[0]
    for r2 in results:
        r2["p50_vs_smallest"] = r2["p50_ms"] / base["p50_ms"]
    table = md_table(
        ["users", "Redis bytes/user", "req/s (8 conns)", "p50 ms", "p99 ms", "non-2xx"], rows
    )
    floor = None
    if args.floor_users:
        floor = floor_bytes_per_user(args.floor_users)
        table += (
            f"\n\nThe floor of one sorted-set entry per user on this Redis "
            f"({floor['redis_version']}): {args.floor_users:,} members of 16 bytes (a UUID's "
            f"bytes, the shortest unique name) take **{floor['bytes_per_user']:.1f}** "
            "bytes/user."
        )
    print(table)
    write_results("boardsize", {"runs": results, "sorted_set_floor": floor}, table)


def floor_bytes_per_user(users: int) -> dict[str, Any]:
    """Redis memory per user of a sorted set whose members are 16 raw bytes each."""
    with redis_server() as redis_url:
        client = redis.Redis.from_url(redis_url)
        base_mem = int(client.info("memory")["used_memory"])
        fill(redis_url, users, member=lambda i: uuid.UUID(int=i + 1).bytes)
        assert client.zcard("sb:{global}:scores") == users
        per_user = (int(client.info("memory")["used_memory"]) - base_mem) / users
        version = str(client.info("server")["redis_version"])
        client.close()
    return {"users": users, "bytes_per_user": per_user, "redis_version": version}


if __name__ == "__main__":
    main()
