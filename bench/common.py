"""Shared benchmark plumbing: start what is measured, drive wrk, write results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
ROOT = BENCH_DIR.parent
PYTHON = sys.executable
JWT_SECRET = "bench-jwt-secret-" + "j" * 32
ACTION_SECRET = "bench-action-secret-" + "a" * 32
SERVER_CPU = "0"
LOAD_CPU = "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def pinned(cpu: str, cmd: Sequence[str]) -> list[str]:
    """The command pinned to a CPU when taskset exists and the machine has several."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *cmd]
    return list(cmd)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _cpu_ticks(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, user ticks, system ticks) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[11]), int(fields[12])


def tree_cpu_seconds(root: int) -> tuple[float, float]:
    """CPU seconds (user + system, and system alone) used so far by a process and all
    its descendants."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (t := _cpu_ticks(int(entry.name))) is not None:
            table[int(entry.name)] = t
    total, system, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1] + table[pid][2]
            system += table[pid][2]
            todo += [p for p, (ppid, _, _) in table.items() if ppid == pid]
    tick = os.sysconf("SC_CLK_TCK")
    return total / tick, system / tick


class CpuMeter:
    """CPU seconds used by named process trees over a window (`with CpuMeter(...) as m`):
    `m.used[name]` (user + system), `m.system[name]` (system alone), and the window's
    length in `m.wall`."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.start: dict[str, tuple[float, float]] = {}
        self.used: dict[str, float] = {}
        self.system: dict[str, float] = {}
        self.wall = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        for name, pid in self.pids.items():
            total, system = tree_cpu_seconds(pid)
            self.used[name] = total - self.start[name][0]
            self.system[name] = system - self.start[name][1]


SERVER_PIDS: dict[int, int] = {}  # port -> pid of the server process started for it
REDIS_PIDS: dict[str, int] = {}  # url -> pid of the throwaway redis-server


@contextlib.contextmanager
def redis_server(extra: Sequence[str] = ()) -> Iterator[str]:
    """A throwaway redis-server on the load CPU; yields its URL."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="sb-bench-redis-")
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", tmp, *extra]  # fmt: skip
    proc = subprocess.Popen(pinned(LOAD_CPU, cmd), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    REDIS_PIDS[url] = proc.pid
    try:
        wait_port(port)
        yield url
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def server_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    env.update(
        SCOREBOARD_REDIS_URL=redis_url,
        SCOREBOARD_JWT_SECRET=JWT_SECRET,
        SCOREBOARD_ACTION_SECRET=ACTION_SECRET,
        SCOREBOARD_RATE_LIMIT_PER_MIN="0",
        SCOREBOARD_SINK="false",
        SCOREBOARD_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def scoreboard_serve(redis_url: str, cpu: str = SERVER_CPU, **extra: str) -> Iterator[int]:
    """`scoreboard serve` on one CPU (logs to a temp file); yields the port."""
    port = free_port()
    env = server_env(redis_url, SCOREBOARD_HTTP_PORT=str(port), **extra)
    log = tempfile.NamedTemporaryFile(prefix="sb-bench-serve-", suffix=".log", delete=False)
    cmd = pinned(cpu, [PYTHON, "-m", "scoreboard", "serve"])
    proc = Proc("serve", subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
    SERVER_PIDS[port] = proc.popen.pid
    try:
        wait_port(port)
        yield port
    finally:
        proc.stop()
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def baseline_serve(cpu: str = SERVER_CPU, busy_us: int = 0) -> Iterator[int]:
    """The bare aiohttp JSON app (bench/baseline_app.py) on one CPU, spinning `busy_us`
    µs per request; yields the port."""
    port = free_port()
    cmd = pinned(
        cpu, [PYTHON, str(BENCH_DIR / "baseline_app.py"), str(port), f"--busy-us={busy_us}"]
    )
    proc = Proc("baseline", subprocess.Popen(cmd))
    SERVER_PIDS[port] = proc.popen.pid
    try:
        wait_port(port)
        yield port
    finally:
        proc.stop()


_TOKENS_ISSUED = int(time.time())


def make_requests(n: int, users: int, path: str, out: Path, delta: int = 1) -> Path:
    """n valid increment requests (distinct nonces, `users` users) as wrk's input file.

    One line per request: method, path, then the headers and the body, tab-separated.
    """
    import jwt

    now = int(time.time())
    user_ids = [str(uuid.UUID(int=i + 1)) for i in range(users)]
    # Users keep their JWT across every file of this process, as a client keeps its token
    # for its lifetime; fresh tokens per file would make each run start with a cold cache.
    user_tokens = [
        jwt.encode(
            {"sub": u, "iat": _TOKENS_ISSUED, "exp": _TOKENS_ISSUED + 7200},
            JWT_SECRET,
            algorithm="HS256",
        )
        for u in user_ids
    ]
    with out.open("w") as f:
        for i in range(n):
            u = i % users
            nonce = secrets.token_urlsafe(18)
            action = jwt.encode(
                {"sub": user_ids[u], "nonce": nonce, "delta": delta, "action": "score",
                 "iat": now, "exp": now + 300},
                ACTION_SECRET,
                algorithm="HS256",
            )  # fmt: skip
            body = json.dumps({"userId": user_ids[u], "delta": delta, "actionToken": action})
            f.write(f"POST\t{path}\t{user_tokens[u]}\t{nonce}\t{body}\n")
    return out


WRK_SCRIPT = BENCH_DIR / "wrk_requests.lua"


@dataclass
class WrkResult:
    requests: int
    rps: float
    non2xx: int
    p50_ms: float
    p99_ms: float
    seconds: float
    # CPU used during the run, in cores (1.0 = one core busy), per watched process tree
    # and for wrk itself; and the server's CPU µs per request.
    cpu: dict[str, float] = field(default_factory=dict)
    server_us_per_request: float | None = None
    # The part of it spent in the kernel (socket calls, waking the load generator).
    server_sys_us_per_request: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def wrk(
    url: str,
    seconds: int,
    connections: int = 64,
    requests_file: Path | None = None,
    cpu: str = LOAD_CPU,
    watch: dict[str, int] | None = None,
) -> WrkResult:
    """Run wrk with one thread on the load CPU; with a requests file, replay it in order.

    `watch` names process trees (e.g. {"server": pid, "redis": pid}) whose CPU use over
    the run is recorded; wrk's own is always recorded.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    env = dict(os.environ)
    if requests_file is not None:
        env["SB_REQUESTS"] = str(requests_file)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuMeter(**(watch or {})) as meter:
        proc = subprocess.run(pinned(cpu, cmd), capture_output=True, text=True, env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_wrk(proc.stdout)
    # Over wrk's own run, not the whole call: wrk first loads its request file (seconds,
    # for a big one) while the servers idle. wrk's CPU includes that loading.
    result.cpu = {n: round(u / result.seconds, 3) for n, u in meter.used.items()}
    wrk_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    result.cpu["wrk"] = round(wrk_cpu / result.seconds, 3)
    if "server" in meter.used and result.requests:
        result.server_us_per_request = round(meter.used["server"] / result.requests * 1e6, 1)
        sys_us = meter.system["server"] / result.requests * 1e6
        result.server_sys_us_per_request = round(sys_us, 1)
    if result.non2xx:
        print(
            f"  {url}: {result.non2xx} non-2xx responses"
            " (SB_SHOW_ERRORS=1 prints the first bodies)",
            file=sys.stderr,
        )
        if proc.stderr:
            print(proc.stderr[:600], file=sys.stderr)
    return result


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def parse_wrk(out: str) -> WrkResult:
    reqs = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if not (reqs and rps and p50 and p99):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    secs = float(reqs.group(2)) / (1000 if reqs.group(3) == "ms" else 1)
    return WrkResult(
        requests=int(reqs.group(1)),
        rps=float(rps.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        seconds=secs,
    )


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def write_results(name: str, data: dict[str, Any], table: str) -> Path:
    """bench/results/<name>.json and <name>.md."""
    RESULTS_DIR.mkdir(exist_ok=True)
    data = {"machine": machine(), **data}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(table + "\n")
    return path


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_bars(
    name: str, title: str, labels: Sequence[str], values: Sequence[float], ylabel: str
) -> Path | None:
    """bench/results/<name>.png, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, values, color="#3b82f6")
    ax.tick_params(axis="x", labelsize=7, labelrotation=20)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    path = RESULTS_DIR / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
