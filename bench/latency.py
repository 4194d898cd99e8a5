"""Latency under fixed load: open-loop increments at 25 %, 50 % and 75 % of the measured max.

Each level also drives the bare aiohttp app at the same rate with the same requests: a
control for what the machine and the generator add to the tail.

    .venv/bin/python bench/latency.py [--seconds 10] [--max-rps N]

After a warm-up, the maximum is measured with wrk (closed loop, 64 connections), unless
--max-rps gives it.
"""

from __future__ import annotations

import argparse
import json
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


def _open_loop(port: int, rate: float, seconds: float, requests: Path) -> dict[str, Any]:
    cmd = [PYTHON, str(BENCH_DIR / "openloop.py"), "--port", str(port), "--rate", str(rate),
           "--seconds", str(seconds), "--requests", str(requests)]  # fmt: skip
    out = subprocess.run(pinned(LOAD_CPU, cmd), capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10)
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
            max_rps = args.max_rps
            if not max_rps:
                reqs = make_requests(20_000 * 5, args.users, "/scores/increment", tmp / "max.tsv")
                max_rps = wrk(url, 5, 64, reqs).rps
            print(f"maximum: {max_rps:,.0f} increments/s")
            with baseline_serve() as base_port:
                for share in (0.25, 0.50, 0.75):
                    rate = max_rps * share
                    n = int(rate * args.seconds) + 10
                    reqs = make_requests(
                        n, args.users, "/scores/increment", tmp / f"open-{share}.tsv"
                    )
                    r = _open_loop(port, rate, args.seconds, reqs)
                    # The control: the bare app at the same rate, from the same generator.
                    # What it shows in its tail is the machine's and the generator's.
                    c = _open_loop(base_port, rate, args.seconds, reqs)
                    r["share_of_max"] = share
                    r["baseline"] = c
                    results.append(r)
                    bad = sum(v for k, v in r["statuses"].items() if not 200 <= int(k) < 300)
                    rows.append([f"{int(share * 100)} %", r["rate"], r["achieved_rps"],
                                 r["p50_ms"], r["p99_ms"], r["p999_ms"], bad,
                                 c["p50_ms"], c["p99_ms"], c["p999_ms"]])  # fmt: skip
    table = md_table(
        ["load", "target/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "non-2xx",
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
