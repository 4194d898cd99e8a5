"""Latency under fixed load: open-loop increments at 25 %, 50 % and 75 % of the measured max.

Each level also drives the bare aiohttp app at the same rate with the same requests: a
control for what the machine and the generator add to the tail.

    .venv/bin/python bench/latency.py [--seconds 5] [--repeats 3] [--max-rps N]

Each level runs --repeats times, alternating with the bare app, each run at its share of
the maximum measured just before it (3 s of wrk), and the table shows the medians (and
each run's p99 / p99.9): the machine's speed drifts by tens of percent within minutes.

After a warm-up, the maximum is measured with wrk (closed loop, 64 connections), unless
--max-rps gives it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    LOAD_CPU,
    PYTHON,
    baseline_serve,
    make_requests,
    md_table,
    pinned,
    plot_bars,
    redis_server,
    scoreboard_serve,
    write_results,
    wrk,
)

WARMUP_S = 3
MAX_S = 3


def _open_loop(port: int, rate: float, seconds: float, requests: Path) -> dict[str, Any]:
    cmd = [PYTHON, str(BENCH_DIR / "openloop.py"), "--port", str(port), "--rate", str(rate),
           "--seconds", str(seconds), "--requests", str(requests)]  # fmt: skip
    out = subprocess.run(pinned(LOAD_CPU, cmd), capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures as the medians over repeated runs at the same rate."""
    out = dict(runs[0])
    for key in ("rate", "achieved_rps", "p50_ms", "p99_ms", "p999_ms", "max_ms"):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5, help="seconds per open-loop run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per level (medians shown)")
    ap.add_argument("--max-rps", type=float, default=0, help="skip measuring the maximum")
    ap.add_argument("--users", type=int, default=10_000)
    args = ap.parse_args()
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmpdir, redis_server() as redis_url:
        tmp = Path(tmpdir)
        with scoreboard_serve(redis_url) as port:
            url = f"http://127.0.0.1:{port}/scores/increment"
            # A fresh process is slower for its first seconds (scripts loaded, tokens not
            # yet cached): warm it up, so the maximum is that of the process measured.
            warm = make_requests(20_000 * WARMUP_S, args.users, "/scores/increment", tmp / "w.tsv")
            wrk(url, WARMUP_S, 64, warm)
            files = 0

            def maximum() -> float:
                """Increments/s at saturation now (wrk, closed loop, 64 connections)."""
                nonlocal files
                if args.max_rps:
                    return float(args.max_rps)
                files += 1
                reqs = make_requests(
                    20_000 * MAX_S, args.users, "/scores/increment", tmp / f"max-{files}.tsv"
                )
                return wrk(url, MAX_S, 64, reqs).rps

            max_rps = maximum()
            print(f"maximum: {max_rps:,.0f} increments/s")
            with baseline_serve() as base_port:
                for share in (0.25, 0.50, 0.75):
                    # Sized for the machine's fast minutes; a run uses what its rate needs.
                    n = int(max_rps * 1.5 * share * args.seconds) + 10
                    serve_runs, bare_runs = [], []
                    for rep in range(args.repeats):
                        reqs = make_requests(
                            n, args.users, "/scores/increment", tmp / f"open-{share}-{rep}.tsv"
                        )
                        # The maximum of this minute: the machine's speed drifts by tens
                        # of percent within minutes, and "50 % of max" means of its max now.
                        now_max = maximum()
                        rate = min(now_max, max_rps * 1.5) * share
                        run = _open_loop(port, rate, args.seconds, reqs)
                        run["max_rps"] = now_max
                        serve_runs.append(run)
                        # The control: the bare app at the same rate, from the same
                        # generator. What it shows in its tail is the machine's and the
                        # generator's.
                        bare_runs.append(_open_loop(base_port, rate, args.seconds, reqs))
                    r = _median_run(serve_runs)
                    c = _median_run(bare_runs)
                    r["share_of_max"] = share
                    r["baseline"] = c
                    r["repeats"] = serve_runs
                    r["baseline_repeats"] = bare_runs
                    results.append(r)
                    bad = sum(
                        v
                        for run in serve_runs
                        for k, v in run["statuses"].items()
                        if not 200 <= int(k) < 300
                    )
                    each = ", ".join(f"{x['p99_ms']:.1f} / {x['p999_ms']:.1f}" for x in serve_runs)
                    rows.append([f"{int(share * 100)} %", r["rate"], r["achieved_rps"],
                                 r["p50_ms"], r["p99_ms"], r["p999_ms"], each, bad,
                                 c["p50_ms"], c["p99_ms"], c["p999_ms"]])  # fmt: skip
    table = md_table(
        ["load", "target/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms",
         "p99 / p99.9 of each run", "non-2xx",
         "bare app p50", "bare app p99", "bare app p99.9"],
        rows,
    )  # fmt: skip
    print(table)
    write_results("latency", {"max_rps": max_rps, "runs": results}, table)
    labels, values = [], []
    for r in results:
        level = f"{int(r['share_of_max'] * 100)}%"
        labels += [f"{level} serve", f"{level} bare"]
        values += [r["p99_ms"], r["baseline"]["p99_ms"]]
    plot_bars("latency", "p99 latency under open-loop load (ms)", labels, values, "ms")


if __name__ == "__main__":
    main()
