"""Throughput: increments/s of `scoreboard serve` against a bare aiohttp app, alternated.

Also reads: GET /scores/top (process cache) and GET /scores/{userId} per second.

    .venv/bin/python bench/throughput.py [--seconds 2] [--rounds 7] [--workers 2]\
        [--control-busy-us 30]

The bare app, `serve` and `serve` with N workers all start once and are warmed up; then
each round measures them back to back for a few seconds each: bare POST, serve
increment, N workers; bare GET, serve GET top, serve GET user. A ratio is taken between
neighbours in one round (seconds apart) and the table shows the median over the
rounds, because this machine's speed drifts by tens of percent within a minute: short
alternations see the same machine, long ones did not. An idle server uses no CPU while
another is measured. Besides requests/s, every run records the CPU each process used
(in cores: 1.0 is one busy core) and the server's CPU µs per request, which stays
meaningful when the load generator, not the server, is the limit, and the part of it
spent in the kernel.

The control, "baseline GET + 30 µs busy", is the bare app spinning 30 µs of CPU per
request before it answers. On this VM it shows what a slower server pays on top of its
own work: its kernel µs per request doubles (the load generator's vCPU halts between
responses, and waking it costs the sender; the guest does not poll before halting), so a
requests/s ratio understates a server that does more per request. The serve rows pay
the same.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from common import (
    REDIS_PIDS,
    SERVER_PIDS,
    WrkResult,
    baseline_serve,
    make_requests,
    md_table,
    plot_bars,
    redis_server,
    scoreboard_serve,
    write_results,
    wrk,
)

WARMUP_S = 2


class Runner:
    """Drives wrk at one server with fresh requests (distinct nonces) for every run."""

    def __init__(self, args: argparse.Namespace, tmp: Path, redis_url: str) -> None:
        self.args = args
        self.tmp = tmp
        self.redis_pid = REDIS_PIDS[redis_url]
        self.files = 0

    def requests(self, seconds: float) -> Path:
        self.files += 1
        n = int(self.args.max_rps * seconds)
        return make_requests(
            n, self.args.users, "/scores/increment", self.tmp / f"{self.files}.tsv"
        )

    def run(
        self, port: int, path: str, requests: Path | None = None, *, checks_nonces: bool = True
    ) -> WrkResult:
        watch = {"server": SERVER_PIDS[port], "redis": self.redis_pid}
        url = f"http://127.0.0.1:{port}{path}"
        r = wrk(url, self.args.seconds, self.args.connections, requests, watch=watch)
        # The bare app ignores nonces: a file that wraps around changes nothing for it.
        if checks_nonces and requests is not None:
            if r.requests > self.args.max_rps * self.args.seconds:
                print(f"  warning: {r.requests} requests > the file's: nonces repeated (409s)")
        return r

    def warm(self, port: int) -> None:
        wrk(f"http://127.0.0.1:{port}/scores/increment", WARMUP_S, 64, self.requests(WARMUP_S))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=2, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=7, help="alternations of baseline and serve")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument(
        "--max-rps", type=int, default=20_000, help="upper bound used to size the request files"
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="also measure SCOREBOARD_WORKERS=N (0: skip)"
    )
    ap.add_argument(
        "--control-busy-us",
        type=int,
        default=30,
        help="also measure the bare GET spinning this many µs per request (0: skip)",
    )
    args = ap.parse_args()
    multi = f"serve increment, {args.workers} workers"
    busy_name = f"baseline GET + {args.control_busy_us} µs busy"
    runs: dict[str, list[dict[str, Any]]] = {}
    ratios: dict[str, list[float]] = {}

    def record(name: str, r: WrkResult) -> float:
        runs.setdefault(name, []).append(r.as_dict())
        print(
            f"  {name}: {r.rps:,.0f}/s, server {r.server_us_per_request} µs/request"
            f" ({r.server_sys_us_per_request} in the kernel),"
            f" cores {r.cpu}, non-2xx {r.non2xx}",
            flush=True,
        )
        return r.rps

    def ratio(name: str, value: float) -> None:
        ratios.setdefault(name, []).append(value)

    with contextlib.ExitStack() as stack:
        tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sb-bench-"))
        redis_url = stack.enter_context(redis_server())
        runner = Runner(args, Path(tmpdir), redis_url)
        bare = stack.enter_context(baseline_serve())
        control = None
        if args.control_busy_us:
            control = stack.enter_context(baseline_serve(busy_us=args.control_busy_us))
        one_port = stack.enter_context(scoreboard_serve(redis_url))
        many_port = None
        if args.workers > 1:
            many_port = stack.enter_context(
                scoreboard_serve(redis_url, cpu="0-1", SCOREBOARD_WORKERS=str(args.workers))
            )
        for port in (bare, control, one_port, many_port):
            if port is not None:
                runner.warm(port)
        base_file = runner.requests(args.seconds)
        # User 2 surely has a score after the warm-up.
        user = f"/scores/{uuid.UUID(int=2)}"
        for rnd in range(args.rounds):
            base_post = record(
                "baseline POST",
                runner.run(bare, "/scores/increment", base_file, checks_nonces=False),
            )
            reqs = runner.requests(args.seconds)
            one = record("serve increment", runner.run(one_port, "/scores/increment", reqs))
            ratio("serve increment / baseline POST", one / base_post)
            if many_port is not None:
                reqs = runner.requests(args.seconds)
                many = record(multi, runner.run(many_port, "/scores/increment", reqs))
                ratio(f"{args.workers} workers / one process", many / one)
            base_get = record("baseline GET", runner.run(bare, "/scores/top"))
            if control is not None:
                busy = record(busy_name, runner.run(control, "/scores/top"))
                ratio(f"{busy_name} / baseline GET", busy / base_get)
            top = record("serve GET /scores/top", runner.run(one_port, "/scores/top"))
            by_user = record("serve GET /scores/{userId}", runner.run(one_port, user))
            ratio("GET /scores/top (cache) / baseline GET", top / base_get)
            ratio("GET /scores/{userId} / baseline GET", by_user / base_get)
            print(f"round {rnd + 1}/{args.rounds} done", flush=True)

    rows: list[list[Any]] = []
    for name, rs in runs.items():

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(statistics.median(r[key] for r in rs))

        cpu = {k: statistics.median(r["cpu"].get(k, 0.0) for r in rs) for k in rs[0]["cpu"]}
        rows.append(
            [
                name,
                med("rps"),
                med("server_us_per_request"),
                med("server_sys_us_per_request"),
                f"{cpu.get('server', 0):.2f}",
                f"{cpu.get('redis', 0):.2f}",
                f"{cpu.get('wrk', 0):.2f}",
                med("p50_ms"),
                med("p99_ms"),
                sum(r["non2xx"] for r in rs),
            ]
        )
    table = md_table(
        ["scenario", "req/s", "server CPU µs/req", "of it kernel", "server cores",
         "redis cores", "wrk cores", "p50 ms", "p99 ms", "non-2xx"],
        rows,
    )  # fmt: skip
    ratio_rows = [
        [name, f"{statistics.median(vs):.2f}", ", ".join(f"{v:.2f}" for v in vs)]
        for name, vs in ratios.items()
    ]
    ratio_table = md_table(["ratio (within a round)", "median", "each round"], ratio_rows)
    print(table)
    print()
    print(ratio_table)
    data = {
        "args": vars(args),
        "runs": runs,
        "ratios": {name: statistics.median(vs) for name, vs in ratios.items()},
        "ratios_per_round": ratios,
    }
    write_results("throughput", data, table + "\n\n" + ratio_table)
    plot_bars("throughput", "requests/s (median of rounds)", [r[0] for r in rows],
              [r[1] for r in rows], "req/s")  # fmt: skip


if __name__ == "__main__":
    main()
