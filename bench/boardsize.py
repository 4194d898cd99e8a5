"""Board size: increment latency and Redis memory per user with 1k, 1M and 10M users.

    .venv/bin/python bench/boardsize.py [--sizes 1000,1000000,10000000] [--seconds 5]

Each size gets a fresh Redis, filled through `redis-cli --pipe` (ZADD of 1,000 members a
command, scores stored negated as the service stores them), then `scoreboard serve` takes
increments of existing users at a moderate closed-loop load (wrk, 8 connections): the
same 1,000 users at every size, after a 2-second warm-up. The smallest size runs again
at the end, to show how far the machine's speed drifted during the run.
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


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def fill(redis_url: str, users: int, chunk: int = 1000) -> float:
    """ZADD `users` users into the global board; returns seconds taken."""
    port = redis_url.split(":")[2].split("/")[0]
    rng = random.Random(1)
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["redis-cli", "-p", port, "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert proc.stdin is not None
    for base in range(0, users, chunk):
        parts = ["ZADD", "sb:{global}:scores"]
        for i in range(base, min(users, base + chunk)):
            parts += [str(-rng.randint(0, 1_000_000)), str(uuid.UUID(int=i + 1))]
        proc.stdin.write(_resp(*parts))
    proc.stdin.close()
    proc.wait()
    return time.perf_counter() - start


ACTIVE_USERS = 1000
WARMUP_S = 2


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,1000000,10000000")
    ap.add_argument("--seconds", type=int, default=5)
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
            warm = make_requests(8000 * WARMUP_S, users, "/scores/increment",
                                 Path(tmpdir) / "warm.tsv")  # fmt: skip
            reqs = make_requests(8000 * args.seconds, users, "/scores/increment",
                                 Path(tmpdir) / "req.tsv")  # fmt: skip
            with scoreboard_serve(redis_url) as port:
                url = f"http://127.0.0.1:{port}/scores/increment"
                wrk(url, WARMUP_S, 8, warm)
                r = wrk(url, args.seconds, 8, reqs)
            client.close()
        results.append({"users": size, "fill_s": took, "bytes_per_user": per_user, **r.as_dict()})
        rows.append([f"{size:,}", per_user, r.rps, r.p50_ms, r.p99_ms, r.non2xx])
        print(rows[-1])
    base = results[0]
    for r2 in results:
        r2["p50_vs_smallest"] = r2["p50_ms"] / base["p50_ms"]
    table = md_table(
        ["users", "Redis bytes/user", "req/s (8 conns)", "p50 ms", "p99 ms", "non-2xx"], rows
    )
    print(table)
    write_results("boardsize", {"runs": results}, table)


if __name__ == "__main__":
    main()
