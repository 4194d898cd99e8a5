"""CPU instructions per request, counted by callgrind: ratios that do not drift.

    .venv/bin/python bench/instructions.py [--requests 400] [--concurrency 16]

Requests/s on a shared 2-core machine move by tens of percent from one minute to the
next. Instructions do not: valgrind's callgrind counts the user-space instructions a
process executes, the same count for the same work whatever else the machine does.
Each server (the bare aiohttp app, `scoreboard serve`) runs under callgrind with
counting off; a Python client sends a warm-up round (users' tokens get cached, scripts
loaded), then counting is switched on for `--requests` more (the same users, fresh
nonces) and the count is read. The bare app is counted twice: as the issue defines it
(plain aiohttp), and on uvloop, the event loop `serve` runs on, which alone saves tens
of thousands of instructions a request; the second ratio is our own code's cost.
Kernel time (socket system calls) is not counted, and instructions are not cycles: this
is the Python-side cost, which is what the hot-path work changes. Needs valgrind
(apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    BENCH_DIR,
    PYTHON,
    free_port,
    make_requests,
    md_table,
    plot_bars,
    redis_server,
    server_env,
    wait_port,
    write_results,
)


async def _drive(port: int, lines: list[str], concurrency: int, get: str | None) -> int:
    """Send one request per line (or a GET of `get` per line); returns the non-2xx count."""
    gate = asyncio.Semaphore(concurrency)
    bad = 0
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:

        async def one(line: str) -> None:
            nonlocal bad
            _, path, bearer, nonce, body = line.split("\t", 4)
            async with gate:
                if get is not None:
                    request = session.get(get)
                else:
                    headers = {
                        "Authorization": f"Bearer {bearer}",
                        "X-Action-Nonce": nonce,
                        "Content-Type": "application/json",
                    }
                    request = session.post(path, data=body.encode(), headers=headers)
                async with request as r:
                    await r.read()
                    bad += not 200 <= r.status < 300

        await asyncio.gather(*(one(line) for line in lines))
    return bad


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=True)


@contextlib.contextmanager
def _under_callgrind(cmd: list[str], env: dict[str, str], port: int, out: Path) -> Iterator[int]:
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen(
        [*vg, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port, timeout=300)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait()


def _count(
    pid: int, out: Path, port: int, lines: list[str], concurrency: int, get: str | None
) -> tuple[int, int]:
    """(instructions, non-2xx) of the server answering one request per line."""
    before = set(out.parent.glob(out.name + "*"))
    _control(pid, "--instr=on")
    _control(pid, "--zero")
    bad = asyncio.run(_drive(port, lines, concurrency, get))
    _control(pid, "--dump")
    for _ in range(100):
        for dump in set(out.parent.glob(out.name + "*")) - before:
            m = re.search(r"^totals:\s+(\d+)", dump.read_text(errors="replace"), re.MULTILINE)
            if m:
                return int(m.group(1)), bad
        time.sleep(0.1)
    raise RuntimeError(f"no new callgrind dump next to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=400, help="requests counted per scenario")
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    n = args.requests
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmpdir, redis_server() as redis_url:
        tmp = Path(tmpdir)
        # n users: the counted round reuses the warm-up's users (their tokens cached).
        lines = make_requests(2 * n, n, "/scores/increment", tmp / "r.tsv").read_text()
        warm, counted = lines.splitlines()[:n], lines.splitlines()[n:]
        baseline_app = str(BENCH_DIR / "baseline_app.py")
        scenarios = {
            "baseline": [("baseline POST", None), ("baseline GET", "/scores/top")],
            "baseline-uvloop": [
                ("baseline POST, uvloop", None),
                ("baseline GET, uvloop", "/scores/top"),
            ],
            "serve": [
                ("serve increment", None),
                ("serve GET /scores/top", "/scores/top"),
                ("serve GET /scores/{userId}", f"/scores/{uuid.UUID(int=1)}"),
            ],
        }
        for server in scenarios:
            port = free_port()
            env = server_env(redis_url, SCOREBOARD_HTTP_PORT=str(port))
            out = tmp / f"callgrind.{server}"
            cmd = {
                "baseline": [PYTHON, baseline_app, str(port)],
                "baseline-uvloop": [PYTHON, baseline_app, str(port), "--uvloop"],
                "serve": [PYTHON, "-m", "scoreboard", "serve"],
            }[server]
            with _under_callgrind(cmd, env, port, out) as pid:
                asyncio.run(_drive(port, warm, args.concurrency, None))
                for name, get in scenarios[server]:
                    batch = counted if get is None else warm
                    instructions, bad = _count(pid, out, port, batch, args.concurrency, get)
                    results[name] = {"instructions_per_request": instructions / n, "non2xx": bad}
                    print(
                        f"  {name}: {instructions / n / 1000:,.1f} k instructions/request",
                        flush=True,
                    )
    ratios = {
        "serve increment / baseline POST": results["baseline POST"]["instructions_per_request"]
        / results["serve increment"]["instructions_per_request"],
        "GET /scores/top / baseline GET": results["baseline GET"]["instructions_per_request"]
        / results["serve GET /scores/top"]["instructions_per_request"],
        "GET /scores/{userId} / baseline GET": results["baseline GET"]["instructions_per_request"]
        / results["serve GET /scores/{userId}"]["instructions_per_request"],
    }
    # Against the same app on uvloop, which `serve` runs on: what our own code costs.
    for ours, base in (("serve increment", "baseline POST"), ("serve GET /scores/top", "baseline GET")):  # fmt: skip
        ratios[f"{ours} / {base}, uvloop"] = (
            results[f"{base}, uvloop"]["instructions_per_request"]
            / results[ours]["instructions_per_request"]
        )
    rows = [
        [name, round(r["instructions_per_request"] / 1000, 1), r["non2xx"]]
        for name, r in results.items()
    ]
    table = md_table(["scenario", "k instructions/request", "non-2xx"], rows)
    ratio_table = md_table(
        ["throughput ratio implied (baseline instructions / ours)", "ratio"],
        [[k, f"{v:.2f}"] for k, v in ratios.items()],
    )
    print(table)
    print()
    print(ratio_table)
    plot_bars(
        "instructions",
        "CPU instructions per request (callgrind)",
        [r[0] for r in rows],
        [r[1] * 1000 for r in rows],
        "instructions",
    )
    write_results(
        "instructions",
        {"args": vars(args), "results": results, "ratios": ratios},
        table + "\n\n" + ratio_table,
    )


if __name__ == "__main__":
    main()
