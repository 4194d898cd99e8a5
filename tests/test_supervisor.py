"""SCOREBOARD_WORKERS > 1: `scoreboard serve` as a real supervised group of processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from scoreboard import keys
from scoreboard.config import Settings
from scoreboard.metrics import MULTIPROC_ENV
from scoreboard.supervisor import (
    SHUTDOWN_TIMEOUT_S,
    Supervisor,
    settings_env,
    worker_env,
    worker_settings,
)

from .conftest import ACTION_SECRET, JWT_SECRET, Tokens, new_user
from .durable import db_totals, pg_store
from .servers import RedisServer, free_port, port_open
from .streams import next_event

START_TIMEOUT_S = 30.0


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SCOREBOARD_", "PROMETHEUS"))}


@dataclass
class Supervised:
    """A `scoreboard serve` process group started for one test."""

    settings: Settings
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    terminated: bool = False

    def start(self) -> Supervised:
        env = _clean_env() | settings_env(self.settings) | self.extra_env
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scoreboard", "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        self.base = f"http://127.0.0.1:{self.settings.http_port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.listening()) < self.settings.workers:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited early:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not come up:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_bytes().splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict):
                out.append(line)
        return out

    def listening(self) -> dict[int, int]:
        """Worker index -> pid of its newest process that is listening."""
        return {
            line["worker"]: line["pid"]
            for line in self.lines()
            if " listening on " in line.get("msg", "") and "pid" in line
        }

    def increments(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("logger") == "scoreboard.increments"]

    def terminate(self) -> None:
        """SIGTERM once (a second signal tells the supervisor to stop waiting)."""
        assert self.proc is not None
        if not self.terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.terminated = True

    def stop(self, timeout: float = 25.0) -> int:
        assert self.proc is not None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def group_settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        http_port=free_port(),
        workers=2,
        data_dir=str(tmp_path / "data"),
        sink=False,
        log_format="json",
        rate_limit_per_min=0,
    )


@pytest.fixture
def group(group_settings: Settings, tmp_path: Path) -> Iterator[Supervised]:
    sup = Supervised(group_settings, tmp_path / "serve.log").start()
    try:
        yield sup
    finally:
        pids = set(sup.listening().values())
        sup.stop()
        for pid in pids:
            assert not _alive(pid), f"worker {pid} outlived the supervisor"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _session() -> aiohttp.ClientSession:
    # A new connection per request: SO_REUSEPORT spreads connections, not requests.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=10),
    )


async def _ok_metric(session: aiohttp.ClientSession, base: str) -> float:
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith('scoreboard_score_updates_total{outcome="ok"}'):
            return float(line.split()[-1])
    raise AssertionError("no ok counter in /metrics")


async def test_increments_spread_over_workers_and_apply_exactly(
    group: Supervised, tokens: Tokens
) -> None:
    users = [new_user() for _ in range(6)]
    sent: dict[str, int] = {}
    totals: Counter[str] = Counter()

    async with _session() as session:

        async def one(i: int) -> None:
            user = users[i % len(users)]
            headers, body = tokens.request(user, 1 + i % 7)
            headers["X-Request-ID"] = f"spread-{i}"
            async with session.post(
                f"{group.base}/scores/increment", json=body, headers=headers
            ) as r:
                assert r.status == 200, await r.text()
            sent[headers["X-Request-ID"]] = body["delta"]
            totals[user] += body["delta"]

        for batch in range(6):
            await asyncio.gather(*(one(batch * 10 + i) for i in range(10)))

        for user in users:
            async with session.get(f"{group.base}/scores/{user}") as r:
                assert (await r.json())["score"] == totals[user]
        # Whichever worker answers, /metrics shows every worker's increments.
        for _ in range(6):
            assert await _ok_metric(session, group.base) == len(sent)

    pids = set(group.listening().values())
    assert len(pids) == 2
    logged = [line for line in group.increments() if line.get("requestId") in sent]
    assert len(logged) == len(sent)
    assert all(line["outcome"] == "ok" for line in logged)
    served_by = Counter(line["pid"] for line in logged)
    assert set(served_by) == pids, served_by


@dataclass
class _Load:
    """Client loops posting increments until told to stop; every attempt is kept."""

    base: str
    tokens: Tokens
    users: list[str]
    ok: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[float, str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    stopping: bool = False
    warm: asyncio.Event = field(default_factory=asyncio.Event)

    async def loop(self, session: aiohttp.ClientSession, n: int) -> None:
        user = self.users[n]
        i = 0
        while not self.stopping:
            i += 1
            headers, body = self.tokens.request(user, 1 + i % 5)
            headers["X-Request-ID"] = f"load-{n}-{i}"
            try:
                async with session.post(
                    f"{self.base}/scores/increment", json=body, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
                    self.ok.append((user, body["delta"]))
                    if len(self.ok) >= 40:
                        self.warm.set()
            except (aiohttp.ClientError, TimeoutError) as e:
                self.failed.append((time.monotonic(), type(e).__name__, headers, body))


async def test_a_killed_worker_is_replaced_while_load_continues(
    group: Supervised, tokens: Tokens
) -> None:
    concurrency = 8
    load = _Load(group.base, tokens, [new_user() for _ in range(concurrency)])
    before = group.listening()
    async with _session() as session:
        loops = [asyncio.create_task(load.loop(session, n)) for n in range(concurrency)]
        try:
            await asyncio.wait_for(load.warm.wait(), START_TIMEOUT_S)
            killed_at = time.monotonic()
            os.kill(before[1], signal.SIGKILL)
            # Keep the load on until the replacement has served increments itself.
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                now = group.listening()
                new_pid = now.get(1)
                if new_pid != before[1] and any(
                    line["pid"] == new_pid for line in group.increments()
                ):
                    break
                assert time.monotonic() < deadline, group.log.read_text()[-3000:]
                await asyncio.sleep(0.1)
        finally:
            load.stopping = True
            await asyncio.gather(*loops)

        # At most the requests in flight on the killed worker failed, all right at the kill:
        # each client loop has one request in flight, so none may fail twice.
        loops_failed = [h["X-Request-ID"].rsplit("-", 1)[0] for _, _, h, _ in load.failed]
        assert len(set(loops_failed)) == len(loops_failed) <= concurrency, load.failed
        assert all(t - killed_at < 2.0 for t, *_ in load.failed), load.failed
        # A failed request may or may not have been applied: its retry tells which
        # (200: it was not; 409 replay: it was), so every action counts exactly once.
        applied = list(load.ok)
        replayed = 0
        for _, _, headers, body in load.failed:
            async with session.post(
                f"{group.base}/scores/increment", json=body, headers=headers
            ) as r:
                assert r.status in (200, 409), await r.text()
                replayed += r.status == 409
                applied.append((body["userId"], body["delta"]))
        totals: Counter[str] = Counter()
        for user, delta in applied:
            totals[user] += delta
        for user in load.users:
            async with session.get(f"{group.base}/scores/{user}") as r:
                assert (await r.json())["score"] == totals[user]
        # The dead worker's counts stay in the sum (a kill between the Redis call and
        # the counter may leave one of the replayed ones out).
        ok = await _ok_metric(session, group.base)
        assert len(applied) - replayed <= ok <= len(applied)

    after = group.listening()
    assert after[0] == before[0]
    assert after[1] != before[1]
    died = [line for line in group.lines() if line.get("msg") == "worker 1 died; replacing it"]
    assert died and died[0]["workerPid"] == before[1] and died[0]["exitCode"] == -signal.SIGKILL


def test_sigterm_drains_in_flight_requests(
    group_settings: Settings, tokens: Tokens, tmp_path: Path
) -> None:
    """A request whose handler is running when SIGTERM arrives still gets its answer."""
    # A private Redis: pausing writes must not stall anyone else's tests.
    server = RedisServer().start()
    group = Supervised(replace(group_settings, redis_url=server.url), tmp_path / "serve.log")
    try:
        group.start()
        user = new_user()
        headers, body = tokens.request(user, 9)
        payload = orjson.dumps(body)
        request = (
            f"POST /scores/increment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        ).encode() + payload
        pids = set(group.listening().values())
        with redis.Redis(port=server.port) as r:
            r.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        with socket.create_connection(("127.0.0.1", group.settings.http_port), timeout=10) as sock:
            # The increment now waits on Redis when the group is told to stop.
            sock.sendall(request)
            time.sleep(0.3)
            group.terminate()
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response
        assert orjson.loads(response.split(b"\r\n\r\n", 1)[1])["score"] == 9
        assert group.stop() == 0
        assert not port_open(group.settings.http_port)
        assert all(not _alive(pid) for pid in pids)
        stopped = [
            line for line in group.lines() if "workerPid" in line and "stopped" in line["msg"]
        ]
        assert sorted(line["workerPid"] for line in stopped) == sorted(pids)
        assert all(line["exitCode"] == 0 for line in stopped)
    finally:
        if group.proc is not None and group.proc.poll() is None:
            group.proc.kill()
            group.proc.wait()
        server.cleanup()


def test_worker_environment_runs_the_sink_once(tmp_path: Path) -> None:
    settings = Settings(
        redis_url="redis://127.0.0.1:6379/0",
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        workers=4,
        http_port=0,
        sink=True,
    )
    envs = [worker_env(settings, i, 8123, str(tmp_path), {"KEEP": "1"}) for i in range(4)]
    assert [e["SCOREBOARD_SINK"] for e in envs] == ["true", "false", "false", "false"]
    for index, env in enumerate(envs):
        assert env["SCOREBOARD_WORKERS"] == "1"
        assert env["SCOREBOARD_HTTP_PORT"] == "8123"
        assert env[MULTIPROC_ENV] == str(tmp_path)
        assert env["KEEP"] == "1"
        # The settings survive the trip through the environment.
        assert Settings.from_env(env) == worker_settings(settings, index, 8123)
    no_sink = Settings(redis_url="redis://x:1/0", workers=2, sink=False)
    assert worker_env(no_sink, 0, 1, "d", {})["SCOREBOARD_SINK"] == "false"


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoreboard", "serve", *args],
        env=_clean_env() | env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_several_workers_need_a_real_redis(tmp_path: Path) -> None:
    done = _serve({"SCOREBOARD_DATA_DIR": str(tmp_path)}, "--workers", "2")
    assert done.returncode == 2
    assert "SCOREBOARD_WORKERS > 1 needs SCOREBOARD_REDIS_URL" in done.stderr


def test_a_taken_port_is_refused_at_once(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(
            {
                "SCOREBOARD_REDIS_URL": redis_url,
                "SCOREBOARD_JWT_SECRET": JWT_SECRET,
                "SCOREBOARD_ACTION_SECRET": ACTION_SECRET,
                "SCOREBOARD_DATA_DIR": str(tmp_path),
            },
            "--workers",
            "2",
            "--http-port",
            str(port),
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


class _FakeProc:
    """Stands in for a worker process in the supervisor's bookkeeping tests."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class _ScriptedSupervisor(Supervisor):
    def __init__(self, settings: Settings, metrics_dir: str) -> None:
        super().__init__(settings, env={})
        self._metrics_dir = metrics_dir
        self.spawned: list[int] = []

    def _spawn(self, slot: Any) -> None:
        slot.proc = _FakeProc(1000 + len(self.spawned))
        slot.started = time.monotonic()
        self.spawned.append(slot.index)


def _proc(sup: Supervisor, index: int) -> Any:
    """The slot's current (fake) process; Any, so that each read is fresh to the checker."""
    return sup._slots[index].proc


def test_a_worker_that_keeps_dying_at_start_is_restarted_ever_more_slowly(
    tmp_path: Path,
) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", workers=2)
    sup = _ScriptedSupervisor(settings, str(tmp_path))
    slot = sup._slots[1]
    for each in sup._slots:
        sup._spawn(each)
    delays = []
    for _ in range(6):
        _proc(sup, 1).code = 1
        before = len(sup.spawned)
        assert sup._watch() is None
        # Not replaced at once: it died right after its start.
        assert len(sup.spawned) == before and _proc(sup, 1) is None
        delays.append(round(slot.restart_at - time.monotonic(), 1))
        slot.restart_at = time.monotonic() - 1
        assert sup._watch() is None
        assert sup.spawned[-1] == 1 and _proc(sup, 1) is not None
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    # A worker that had been up a while is replaced at once, and the pause starts over.
    slot.started -= 60
    _proc(sup, 1).code = -9
    sup._watch()
    assert _proc(sup, 1) is not None and slot.failures == 0
    # Worker 0 was never touched.
    assert sup.spawned.count(0) == 1


def test_a_worker_configuration_error_stops_the_group(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", workers=2)
    sup = _ScriptedSupervisor(settings, str(tmp_path))
    for slot in sup._slots:
        sup._spawn(slot)
    _proc(sup, 0).code = 2
    assert sup._watch() == 2


def _single(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "scoreboard", "serve"],
            env=_clean_env() | env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def _wait_up(port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_open(port):
        assert all(p.poll() is None for p in procs), "a server exited"
        assert time.monotonic() < deadline, "no server came up"
        time.sleep(0.05)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_single_process_servers_share_the_port_in_server_mode_only(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    server = {
        "SCOREBOARD_REDIS_URL": redis_url,
        "SCOREBOARD_JWT_SECRET": JWT_SECRET,
        "SCOREBOARD_ACTION_SECRET": ACTION_SECRET,
        "SCOREBOARD_HTTP_PORT": str(port),
        "SCOREBOARD_SINK": "false",
        "SCOREBOARD_DATA_DIR": str(tmp_path / "data"),
    }
    # Two containers sharing a network namespace do this (compose.yaml's serve replicas).
    procs = [_single(server, tmp_path / f"server-{i}.log") for i in range(2)]
    try:
        _wait_up(port, procs)
        time.sleep(1.0)
        assert all(p.poll() is None for p in procs), (tmp_path / "server-1.log").read_text()
    finally:
        _stop_all(procs)
    assert [p.returncode for p in procs] == [0, 0]

    embedded = {
        "SCOREBOARD_HTTP_PORT": str(port),
        "SCOREBOARD_DATA_DIR": str(tmp_path / "embedded"),
        "SCOREBOARD_SINK": "false",
    }
    first = _single(embedded, tmp_path / "embedded-0.log")
    try:
        _wait_up(port, [first])
        second = _single(embedded, tmp_path / "embedded-1.log")
        # The embedded store lives in one process: a second one on the port is refused.
        assert second.wait(START_TIMEOUT_S) != 0
        assert "address already in use" in (tmp_path / "embedded-1.log").read_text()
        assert first.poll() is None
    finally:
        _stop_all([first])


async def test_only_worker_0_runs_the_sink(
    group_settings: Settings, tokens: Tokens, tmp_path: Path, pg_url: str
) -> None:
    await (await pg_store(pg_url)).close()  # `scoreboard migrate` ran before the deploy
    settings = replace(group_settings, database_url=pg_url, sink=True)
    group = Supervised(settings, tmp_path / "serve.log").start()
    try:
        sinks = {line["worker"]: line["sink"] for line in group.lines() if "sink" in line}
        assert sinks == {0: True, 1: False}
        users = [new_user() for _ in range(4)]
        async with _session() as session:
            for i in range(20):
                headers, body = tokens.request(users[i % 4], 1 + i % 3)
                async with session.post(
                    f"{group.base}/scores/increment", json=body, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
        deadline = time.monotonic() + 20
        while db_totals(pg_url)["events"] < 20:
            assert time.monotonic() < deadline, db_totals(pg_url)
            await asyncio.sleep(0.1)
        totals = db_totals(pg_url)
        assert totals["events"] == 20 and totals["sums"] == totals["scores"]
        # One process drains the stream: every consumer in the group is worker 0's.
        events = keys.BoardKeys(keys.GLOBAL_BOARD).events
        with redis.Redis.from_url(settings.redis_url) as r:
            consumers = r.xinfo_consumers(events, keys.SINK_GROUP)
        worker0 = group.listening()[0]
        assert consumers and all(f"-{worker0}-" in c["name"].decode() for c in consumers)
    finally:
        group.stop()


async def _gauge(session: aiohttp.ClientSession, base: str, line_start: str) -> float:
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    raise AssertionError(f"no {line_start} in /metrics")


SSE_GAUGE = 'scoreboard_stream_clients{transport="sse"}'
STREAMS = 16


async def _gauge_becomes(session: aiohttp.ClientSession, base: str, want: float) -> None:
    # Generous: on a loaded 2-core machine a worker's gauge file can lag for seconds.
    deadline = time.monotonic() + 30
    while (got := await _gauge(session, base, SSE_GAUGE)) != want:
        assert time.monotonic() < deadline, (got, want)
        await asyncio.sleep(0.1)


async def test_stream_clients_are_counted_over_live_workers(group: Supervised) -> None:
    before = group.listening()
    async with _session() as session, contextlib.AsyncExitStack() as streams:
        responses = []
        # 16 connections: all on one worker by chance once in 30,000 runs.
        for _ in range(STREAMS):
            r = await streams.enter_async_context(session.get(f"{group.base}/scores/stream"))
            assert r.status == 200
            await next_event(r.content, "top", within=5)
            responses.append(r)
        await _gauge_becomes(session, group.base, STREAMS)
        # Worker 1 dies with its streams; its share leaves the sum with it.
        os.kill(before[1], signal.SIGKILL)

        async def open_(r: aiohttp.ClientResponse) -> bool:
            try:
                return (await asyncio.wait_for(r.content.read(1), 1.0)) != b""
            except TimeoutError:
                return True  # still open: nothing to say before the next ping
            except aiohttp.ClientError:
                return False

        alive = sum(await asyncio.gather(*(open_(r) for r in responses)))
        assert 0 < alive < STREAMS
        deadline = time.monotonic() + START_TIMEOUT_S
        while group.listening().get(1) == before[1]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await _gauge_becomes(session, group.base, alive)
    async with _session() as session:
        await _gauge_becomes(session, group.base, 0)
        # A stream open at SIGTERM is ended by the drain, which does not wait it out.
        async with session.get(f"{group.base}/scores/stream") as r:
            await next_event(r.content, "top", within=5)
            started = time.monotonic()
            assert await asyncio.to_thread(group.stop) == 0
            assert time.monotonic() - started < SHUTDOWN_TIMEOUT_S
            with contextlib.suppress(aiohttp.ClientError):
                await asyncio.wait_for(r.content.read(), 5)
            assert r.content.at_eof()
