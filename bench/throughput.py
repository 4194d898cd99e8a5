"""Throughput: increments/s of `scoreboard serve` against a bare aiohttp app, alternated.

Also reads: GET /scores/top (process cache) and GET /scores/{userId} per second.

    .venv/bin/python bench/throughput.py [--seconds 10] [--rounds 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from pathlib import Path
from typing import Any

from common import (
    baseline_serve,
    make_requests,
    md_table,
    plot_bars,
    redis_server,
    scoreboard_serve,
    write_results,
    wrk,
)


def _increments(
    port: int, seconds: int, connections: int, users: int, tmp: Path, est: int
) -> dict[str, Any]:
    reqs = make_requests(est, users, "/scores/increment", tmp / f"req-{port}.tsv")
    r = wrk(f"http://127.0.0.1:{port}/scores/increment", seconds, connections, reqs)
    if r.requests > est:
        print(f"  warning: {r.requests} requests > {est} pre-generated: nonces repeated (409s)")
    return r.as_dict()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of baseline and serve")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument(
        "--max-rps", type=int, default=15_000, help="upper bound used to size the request files"
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="also measure SCOREBOARD_WORKERS=N (0: skip)"
    )
    args = ap.parse_args()
    est = args.max_rps * args.seconds
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmpdir, redis_server() as redis_url:
        tmp = Path(tmpdir)
        runs: dict[str, list[dict[str, Any]]] = {}
        for rnd in range(args.rounds):
            with baseline_serve() as port:
                r = _increments(port, args.seconds, args.connections, args.users, tmp, est)
                runs.setdefault("baseline POST", []).append(r)
                r = wrk(
                    f"http://127.0.0.1:{port}/scores/top", args.seconds, args.connections
                ).as_dict()
                runs.setdefault("baseline GET", []).append(r)
            with scoreboard_serve(redis_url) as port:
                r = _increments(port, args.seconds, args.connections, args.users, tmp, est)
                runs.setdefault("serve increment", []).append(r)
                r = wrk(
                    f"http://127.0.0.1:{port}/scores/top", args.seconds, args.connections
                ).as_dict()
                runs.setdefault("serve GET /scores/top", []).append(r)
                # Line 0 of a request file may be used by wrk to probe; user 2 surely has a score.
                user = str(uuid.UUID(int=2))
                r = wrk(
                    f"http://127.0.0.1:{port}/scores/{user}", args.seconds, args.connections
                ).as_dict()
                runs.setdefault("serve GET /scores/{userId}", []).append(r)
            if args.workers > 1:
                with scoreboard_serve(
                    redis_url, cpu="0-1", SCOREBOARD_WORKERS=str(args.workers)
                ) as port:
                    r = _increments(port, args.seconds, args.connections, args.users, tmp, est)
                    runs.setdefault(f"serve increment, {args.workers} workers", []).append(r)
            print(f"round {rnd + 1}/{args.rounds} done")
        best = {name: max(rs, key=lambda r: r["rps"]) for name, rs in runs.items()}
        base_post = best["baseline POST"]["rps"]
        base_get = best["baseline GET"]["rps"]
        one = best["serve increment"]["rps"]
        for name, r in best.items():
            ref = base_get if "GET" in name else base_post
            rows.append(
                [name, r["rps"], f"{r['rps'] / ref:.2f}", r["p50_ms"], r["p99_ms"], r["non2xx"]]
            )
        data["runs"] = runs
        data["best"] = best
        data["ratios"] = {
            "serve/baseline POST": one / base_post,
            "top cache/baseline GET": best["serve GET /scores/top"]["rps"] / base_get,
        }
        key = f"serve increment, {args.workers} workers"
        if key in best:
            data["ratios"]["workers/one process"] = best[key]["rps"] / one
    table = md_table(["scenario", "req/s", "× baseline", "p50 ms", "p99 ms", "non-2xx"], rows)
    print(table)
    for k, v in data["ratios"].items():
        print(f"{k}: {v:.2f}")
    write_results("throughput", data, table)
    plot_bars(
        "throughput",
        "requests/s (best of rounds)",
        [r[0] for r in rows],
        [r[1] for r in rows],
        "req/s",
    )


if __name__ == "__main__":
    main()
