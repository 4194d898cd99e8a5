"""What the structured log lines cost per request, in microseconds.

Every increment attempt writes one line (`scoreboard.increments`); auth failures and
replays write one more (`scoreboard.security`, from the middleware). This times those
calls in a loop, best of several rounds, against a level that drops them, /dev/null,
a real file, and the standard `logging` path the direct writer replaces.

    .venv/bin/python bench/logging_cost.py                 # 200,000 calls x 5 rounds
    .venv/bin/python bench/logging_cost.py --calls 20000   # a quick check
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import make_mocked_request
from common import md_table, write_results

from scoreboard import logs
from scoreboard.errors import InvalidToken
from scoreboard.http import middleware
from scoreboard.http.state import METRICS
from scoreboard.metrics import Metrics

FIELDS: dict[str, Any] = {
    "requestId": "5f0c3a9e1b2d00000000000f10c562e0",
    "boardId": "global",
    "userId": "0b4e7a1c-3f52-4d8e-9a61-2c7d5e8f9a10",
    "delta": 25,
    "outcome": "ok",
    "latencyMs": 0.412,
}


def best_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """The fastest round's time per call, in µs."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def increment_line() -> None:
    """What the increment handler does for its line: build the fields, then log them."""
    fields: dict[str, Any] = {"requestId": FIELDS["requestId"], "boardId": None}
    fields["boardId"] = "global"
    fields["userId"], fields["delta"] = FIELDS["userId"], 25
    fields["outcome"] = "ok"
    fields["latencyMs"] = round(0.000412 * 1000, 3)
    logs.event(logs.INCREMENTS, "increment", fields)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    args = parser.parse_args()
    calls, rounds = args.calls, args.rounds

    devnull = open(os.devnull, "w")
    tmp = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    rows: list[tuple[str, float]] = []

    def measure(name: str, fn: Callable[[], object]) -> None:
        rows.append((name, best_us(fn, calls, rounds)))
        print(f"{name:58} {rows[-1][1]:7.2f} µs", flush=True)

    def line() -> None:
        logs.event(logs.INCREMENTS, "increment", FIELDS)

    logs.setup("warning", "json", devnull)
    measure("increment line, level below info (dropped)", line)
    logs.setup("info", "json", devnull)
    measure("increment line, JSON -> /dev/null", line)
    measure("increment line incl. building its fields, JSON -> /dev/null", increment_line)
    logs.setup("info", "json", tmp)
    measure("increment line, JSON -> a file", line)
    logs.setup("info", "text", devnull)
    measure("increment line, text -> /dev/null", line)

    # The standard logging path (a LogRecord through the handler chain), for comparison.
    logs.setup("info", "json", devnull)
    saved, logs._direct = logs._direct, None
    measure("same line through logging.Logger.log (not used)", line)
    logs._direct = saved

    # The middleware's extra line for an auth failure (only on refused requests).
    request = make_mocked_request("POST", "/scores/increment")
    request.app[METRICS] = Metrics()
    request[middleware.LOG_FIELDS] = dict(FIELDS)
    error = InvalidToken("token rejected: Signature has expired", reason="expired")
    measure(
        "auth failure: counter + security line, JSON -> /dev/null",
        lambda: middleware._audit(request, error, "/scores/increment"),
    )

    logging.getLogger().handlers.clear()
    devnull.close()
    tmp.close()
    Path(tmp.name).unlink()
    table = md_table(["what", "µs per call"], [(n, f"{v:.2f}") for n, v in rows])
    path = write_results(
        "logging_cost",
        {"calls": calls, "rounds": rounds, "microseconds": dict(rows)},
        table,
    )
    print(f"\n{table}\n\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
