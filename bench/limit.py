"""The limit: Redis itself running increment.lua, with no Python in front of it.

    .venv/bin/python bench/limit.py [--requests 200000]

redis-benchmark sends EVALSHA of the service's own increment.lua with the service's
arguments (a random user and a random nonce each call), unpipelined and
pipelined 16 deep, one client thread on the load CPU, Redis on the other.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from typing import Any

import redis
from common import LOAD_CPU, SERVER_CPU, md_table, pinned, redis_server, write_results

SCOREBOARD_LUA = "increment"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=200_000)
    args = ap.parse_args()
    if shutil.which("redis-benchmark") is None:
        raise SystemExit(
            "redis-benchmark is not installed (it comes with redis-server / redis-tools)"
        )
    from scoreboard.board import MAX_SCORE, load_lua

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    # Redis on the server CPU here: it is the thing measured.
    with redis_server(extra=()) as url:
        port = url.split(":")[2].split("/")[0]
        subprocess.run(["taskset", "-pc", SERVER_CPU, _redis_pid(port)], capture_output=True)
        sha = redis.Redis.from_url(url).script_load(load_lua(SCOREBOARD_LUA))
        now = int(time.time() * 1000)
        cmd_args = [
            "EVALSHA", sha, "6",
            "sb:{global}:scores", "sb:{global}:top", "sb:{global}:seq",
            "sb:{global}:nonce:__rand_int__-__rand_int__", "sb:{global}:rate:x:1", "sb:{global}:events",
            "00000000-0000-0000-0000-00000000__rand_int__", "1", "nonce__rand_int__",
            "ev-__rand_int__", "360000", "0", "61000", str(now), "score",
            "scoreboard.updates", "global", str(MAX_SCORE), "scoreboard.top",
        ]  # fmt: skip
        for pipeline in (1, 16):
            cmd = ["redis-benchmark", "-p", port, "-n", str(args.requests), "-c", "50",
                   "-P", str(pipeline), "-r", "2000000000", "-q", *cmd_args]  # fmt: skip
            out = subprocess.run(pinned(LOAD_CPU, cmd), capture_output=True, text=True, check=True)
            m = re.search(r"([\d.]+) requests per second", out.stdout)
            rps = float(m.group(1)) if m else float("nan")
            info = redis.Redis.from_url(url).info("commandstats")
            stat = info.get("cmdstat_evalsha", {})
            results.append(
                {"pipeline": pipeline, "rps": rps, "usec_per_call": stat.get("usec_per_call")}
            )
            rows.append([pipeline, rps, stat.get("usec_per_call", float("nan"))])
            redis.Redis.from_url(url).config_resetstat()
    table = md_table(["pipeline depth", "increment.lua calls/s", "Redis µs/call"], rows)
    print(table)
    write_results("limit", {"runs": results}, table)


def _redis_pid(port: str) -> str:
    out = subprocess.run(
        ["pgrep", "-f", f"redis-server 127.0.0.1:{port}"], capture_output=True, text=True
    )
    return out.stdout.split()[0] if out.stdout.split() else "0"


if __name__ == "__main__":
    main()
