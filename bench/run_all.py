"""Run every benchmark scenario in turn (about ten minutes on a 2-core machine).

    .venv/bin/python bench/run_all.py [--quick]

Each scenario also runs alone: see bench/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from common import BENCH_DIR, PYTHON


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter runs and smaller boards")
    args = ap.parse_args()
    q = args.quick
    scenarios: list[list[str]] = [
        ["throughput.py", "--seconds", "2", "--rounds", "2" if q else "6"],
        ["latency.py", "--seconds", "3" if q else "4", "--repeats", "1" if q else "3"],
        [
            "boardsize.py",
            "--sizes",
            "1000,100000" if q else "1000,1000000,10000000",
            "--floor-users",
            "100000" if q else "1000000",
        ],  # fmt: skip
        ["limit.py", "--requests", "50000" if q else "200000"],
    ]
    if shutil.which("valgrind"):
        scenarios.append(["instructions.py", "--requests", "200" if q else "400"])
    else:
        print("valgrind is not installed: instructions.py skipped (apt-get install valgrind)")
    sink_quick = ["--events", "30000", "--users", "5000", "--rate", "2000", "--seconds", "5",
                  "--reseed-users", "100000"]  # fmt: skip
    scenarios.append(["sink.py", *(sink_quick if q else [])])
    scenarios.append(["fanout.py", *(["--quick"] if q else [])])
    for scenario in scenarios:
        print(f"== {' '.join(scenario)}", flush=True)
        start = time.monotonic()
        result = subprocess.run(
            [PYTHON, str(BENCH_DIR / scenario[0]), *scenario[1:]], cwd=BENCH_DIR
        )
        print(
            f"== {scenario[0]}: exit {result.returncode} in {time.monotonic() - start:.0f} s",
            flush=True,
        )
        if result.returncode:
            sys.exit(result.returncode)


if __name__ == "__main__":
    main()
