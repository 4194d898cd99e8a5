"""Fan-out benchmark: N SSE clients on one `scoreboard serve`, 10 top-10 changes a second.

Starts what it measures: a throwaway redis-server (unless --redis-url), one `scoreboard
serve` process pinned to CPU 0, and client processes on CPU 1 holding the SSE connections
(raw asyncio protocols, so the clients cost as little as possible). Then it changes the board's top-10 at --rate
per second for --duration seconds and reports, per client count:

- delivery latency: receipt time minus the event's own server timestamp (`updatedAt`);
- staleness: for every change, the time until each client holds a snapshot at least that
  new (coalescing may skip states; this is what a viewer experiences);
- the share of clients holding the final state at the end, and of states delivered;
- the server's CPU (share of one core) and resident memory per client.

    .venv/bin/python bench/fanout.py                      # 1,000, 5,000 and 10,000 clients
    .venv/bin/python bench/fanout.py --quick              # 200 and 1,000 clients, 5 s each
    .venv/bin/python bench/fanout.py --clients 2000 --duration 5

Results are printed and written to bench/results/fanout.json and fanout.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from common import (
    ACTION_SECRET,
    JWT_SECRET,
    LOAD_CPU,
    PYTHON,
    ROOT,
    SERVER_CPU,
    free_port,
    md_table,
    pinned,
    redis_server,
    server_env,
    wait_port,
    write_results,
)

sys.path.insert(0, str(ROOT))

STAMP = re.compile(rb'"updatedAt":"([^"]+)"')
TOP_USERS = 10


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def at(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 2)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(values[-1], 2)}


# The client side: a separate process holding many SSE connections.


def iso_ms(text: bytes) -> float:
    return dt.datetime.fromisoformat(text.decode().replace("Z", "+00:00")).timestamp() * 1000


class SseClient(asyncio.Protocol):
    """One SSE connection: logs (version, receipt ms) of each newer top it sees."""

    def __init__(self, request: bytes, stamps: dict[int, float], ready: asyncio.Future[None]):
        self.request = request
        self.stamps = stamps  # version -> server timestamp (ms), shared by the process
        self.ready = ready
        self.version = -1
        self.log: list[tuple[int, float]] = []
        self.latencies: list[float] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but write the same way)
        cast(asyncio.Transport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        # Kept cheap: one read per connection and event is the client side's whole cost.
        # Only the newest id in the read matters (older ones in it were superseded).
        i = data.rfind(b"id: ")
        if i < 0:
            return  # a ping
        j = data.find(b"\n", i)
        if j < 0:
            return  # split mid-line: the rest comes with the next read
        version = int(data[i + 4 : j])
        if version <= self.version:
            return
        now = time.time() * 1000
        self.version = version
        self.log.append((version, now))
        stamp = self.stamps.get(version)
        if stamp is None:
            m = STAMP.search(data, j)
            if m is not None:
                stamp = self.stamps[version] = iso_ms(m.group(1))
        if not self.ready.done():
            self.ready.set_result(None)
        elif stamp is not None:
            self.latencies.append(now - stamp)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the first event"))


async def client_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    stamps: dict[int, float] = {}
    clients: list[SseClient] = []
    gate = asyncio.Semaphore(200)

    async def connect() -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            client = SseClient(request, stamps, ready)
            for attempt in range(5):
                try:
                    await loop.create_connection(lambda: client, "127.0.0.1", args.port)
                    break
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            await asyncio.wait_for(ready, 30)
            clients.append(client)

    await asyncio.gather(*(connect() for _ in range(args.clients[0])))
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the driver says when it is done
    # States older than the connect snapshot are not part of the measurement.
    base = max(c.log[0][0] for c in clients)
    versions = sorted(v for v in stamps if v > base)
    staleness: list[float] = []
    latencies: list[float] = []
    for client in clients:
        latencies.extend(client.latencies)
        seen = [v for v, _ in client.log]
        for v in versions:
            i = bisect.bisect_left(seen, v)
            if i < len(seen):
                staleness.append(client.log[i][1] - stamps[v])
    summary = {
        "clients": len(clients),
        "closed": sum(c.closed for c in clients),
        "final_versions": [c.version for c in clients],
        "events": sum(len(c.log) for c in clients),
        "versions": versions,
        "latency": percentiles(latencies),
        "staleness": percentiles(staleness),
        "latency_samples": len(latencies),
        "staleness_samples": len(staleness),
    }
    print(json.dumps(summary), flush=True)


# The driver: server, clients, changes, measurements.


class ServerProc:
    """CPU and memory of the measured server process, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> tuple[float, float]:
        """(user, system) CPU seconds so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@contextlib.contextmanager
def serve(redis_url: str, port: int, max_clients: int) -> Iterator[subprocess.Popen[bytes]]:
    """`scoreboard serve` on the server CPU, with room for `max_clients` streams."""
    env = server_env(
        redis_url,
        SCOREBOARD_HTTP_PORT=str(port),
        SCOREBOARD_STREAM_MAX_CLIENTS=str(max_clients),
        SCOREBOARD_STREAM_MAX_CLIENTS_PER_IP=str(max_clients),
        SCOREBOARD_LOG_LEVEL="warning",
        SCOREBOARD_DATA_DIR=tempfile.mkdtemp(prefix="sb-bench-fanout-"),
    )
    log = tempfile.NamedTemporaryFile(prefix="sb-bench-fanout-", suffix=".log", delete=False)
    cmd = pinned(SERVER_CPU, [PYTHON, "-m", "scoreboard", "serve"])
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    try:
        wait_port(port, 30)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def redis(url: str) -> Iterator[str]:
    if url:
        yield url
    else:
        with redis_server() as started:
            yield started


def _settings() -> Any:
    from scoreboard.config import Settings

    return Settings(jwt_secret=JWT_SECRET, action_secret=ACTION_SECRET)


async def _post(session: Any, url: str, user: str, delta: int) -> bool:
    """One increment; True when it changed the top-10."""
    from scoreboard.auth import mint_action_token, mint_user_token

    settings = _settings()
    nonce, action = mint_action_token(settings, user, delta)
    headers = {
        "Authorization": f"Bearer {mint_user_token(settings, user)}",
        "X-Action-Nonce": nonce,
    }
    body = {"userId": user, "delta": delta, "actionToken": action}
    async with session.post(url, json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"increment failed: {r.status} {await r.text()}")
        changed: bool = (await r.json())["topChanged"]
        return changed


async def seed(port: int, board: str, users: list[str]) -> None:
    import aiohttp

    url = f"http://127.0.0.1:{port}/boards/{board}/scores/increment"
    async with aiohttp.ClientSession() as session:
        for i, user in enumerate(users):
            await _post(session, url, user, 500 + i)


async def change_board(port: int, board: str, users: list[str], rate: float, secs: float) -> int:
    """`rate` increments a second to top-10 users, on a clock; returns the top changes."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/boards/{board}/scores/increment"
    changes = 0
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        for i in range(int(rate * secs)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            changes += await _post(session, url, users[i % len(users)], 1)
    return changes


def start_clients(port: int, board: str, n: int, procs: int) -> list[subprocess.Popen[str]]:
    shares = [n // procs + (i < n % procs) for i in range(procs)]
    cmd = [PYTHON, __file__, "--role=client", f"--port={port}"]
    path = f"--path=/boards/{board}/scores/stream"
    return [
        subprocess.Popen(
            pinned(LOAD_CPU, [*cmd, path, f"--clients={k}"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in shares
        if k
    ]


def run_one(args: argparse.Namespace, redis_url: str, n_clients: int) -> dict[str, Any]:
    board = f"bench-{secrets.token_hex(4)}"
    users = [str(uuid.uuid4()) for _ in range(TOP_USERS)]
    port = free_port()
    with serve(redis_url, port, n_clients + 100) as server:
        proc = ServerProc(server.pid)
        asyncio.run(seed(port, board, users))
        time.sleep(0.5)
        rss_before = proc.rss_kib()
        connect_start = time.monotonic()
        clients = start_clients(port, board, n_clients, args.procs)
        for c in clients:
            assert c.stdout is not None
            line = c.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a client process failed: {line!r}")
        connect_s = time.monotonic() - connect_start
        time.sleep(1.0)
        rss_connected = proc.rss_kib()
        cpu0, t0 = proc.cpu_s(), time.monotonic()
        changes = asyncio.run(change_board(port, board, users, args.rate, args.duration))
        cpu1, t1 = proc.cpu_s(), time.monotonic()
        time.sleep(1.5)  # let the last change arrive everywhere
        summaries = []
        for c in clients:
            assert c.stdin is not None and c.stdout is not None
            c.stdin.write("stop\n")
            c.stdin.flush()
            summaries.append(json.loads(c.stdout.readline()))
            c.wait(30)
    final_versions = [v for s in summaries for v in s["final_versions"]]
    newest = max(final_versions)
    measured = sorted({v for s in summaries for v in s["versions"]})
    events = sum(s["events"] for s in summaries) - len(final_versions)  # minus the snapshots
    wall = t1 - t0
    return {
        "clients": n_clients,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "top_changes": changes,
        "connect_s": round(connect_s, 2),
        "latency_ms": merge([s["latency"] for s in summaries]),
        "staleness_ms": merge([s["staleness"] for s in summaries]),
        "clients_with_newest_state_pct": round(
            100 * sum(v == newest for v in final_versions) / len(final_versions), 2
        ),
        "states_delivered_pct": round(
            100 * events / max(1, len(final_versions) * len(measured)), 2
        ),
        "clients_cut_off": sum(s["closed"] for s in summaries),
        "server_cpu_pct_of_core": round(100 * (sum(cpu1) - sum(cpu0)) / wall, 1),
        "server_cpu_user_pct": round(100 * (cpu1[0] - cpu0[0]) / wall, 1),
        "server_cpu_system_pct": round(100 * (cpu1[1] - cpu0[1]) / wall, 1),
        "server_rss_mib_before": round(rss_before / 1024, 1),
        "server_rss_mib_connected": round(rss_connected / 1024, 1),
        "server_kib_per_client": round((rss_connected - rss_before) / n_clients, 2),
        "client_processes": len(clients),
    }


def merge(parts: list[dict[str, float]]) -> dict[str, float]:
    """Percentiles of several client processes: the worst of each (an upper bound)."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {k: max(p[k] for p in parts) for k in parts[0]}


def table(runs: list[dict[str, Any]]) -> str:
    header = [
        "clients",
        "latency p50 ms",
        "latency p99 ms",
        "staleness p99 ms",
        "newest state %",
        "states delivered %",
        "server CPU % of a core (user/sys)",
        "server KiB/client",
    ]
    rows = [
        [
            r["clients"],
            r["latency_ms"].get("p50", "-"),
            r["latency_ms"].get("p99", "-"),
            r["staleness_ms"].get("p99", "-"),
            r["clients_with_newest_state_pct"],
            r["states_delivered_pct"],
            f"{r['server_cpu_pct_of_core']} ({r['server_cpu_user_pct']}/"
            f"{r['server_cpu_system_pct']})",
            r["server_kib_per_client"],
        ]
        for r in runs
    ]
    return md_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1000, 5000, 10000], help="client counts"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="top changes per second")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of changes")
    parser.add_argument("--procs", type=int, default=1, help="client processes (on CPU 1)")
    parser.add_argument("--redis-url", default="", help="use this Redis (default: throwaway)")
    parser.add_argument("--quick", action="store_true", help="200 and 1,000 clients, 5 s each")
    parser.add_argument(
        "--role", choices=["driver", "client"], default="driver", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    if args.role == "client":
        use_uvloop()
        asyncio.run(client_main(args))
        return
    if args.quick:
        args.clients, args.duration = [200, 1000], 5.0
    runs = []
    with redis(args.redis_url) as redis_url:
        for n in args.clients:
            result = run_one(args, redis_url, n)
            print(json.dumps(result), flush=True)
            runs.append(result)
    text = table(runs)
    command = " ".join(["bench/fanout.py", *sys.argv[1:]])
    path = write_results("fanout", {"command": command, "runs": runs}, text)
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
