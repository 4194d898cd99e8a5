"""`scoreboard serve` with SCOREBOARD_WORKERS > 1: a supervisor and its HTTP worker processes.

The supervisor starts N fresh interpreters (`python -m scoreboard.supervisor`), each
listening on the same port with SO_REUSEPORT so that the kernel spreads connections
over them. It replaces a worker that dies, and on SIGTERM/SIGINT asks every worker to
drain (aiohttp's graceful shutdown) before it exits itself.

Why fresh interpreters rather than fork(): the metrics library picks its multi-process
storage when it is first imported, so the workers must start with
PROMETHEUS_MULTIPROC_DIR already set; and a fresh process inherits no event loop,
sockets or threads from the parent.

Only worker 0 runs the in-process persistence sink (when SCOREBOARD_SINK is on), so one
`serve` invocation drains the stream once however many workers it has; a replaced
worker 0 starts the sink again.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

from . import logs
from .config import OPTIONS, ConfigError, Settings
from .metrics import MULTIPROC_ENV

# A fixed name: this module also runs as __main__ in the workers.
logger = logging.getLogger("scoreboard.supervisor")

# A worker that dies sooner than this after its start counts as a failed start:
# its replacement waits, doubling from FIRST_BACKOFF_S up to MAX_BACKOFF_S.
STABLE_AFTER_S = 5.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
# aiohttp waits this long for in-flight requests after SIGTERM ...
SHUTDOWN_TIMEOUT_S = 10.0
# ... and the supervisor this long for a worker to finish before killing it.
DRAIN_DEADLINE_S = SHUTDOWN_TIMEOUT_S + 5.0
POLL_S = 0.05
EXIT_CONFIG = 2


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the environment variable that reproduces it."""
    out: dict[str, str] = {}
    for opt in OPTIONS:
        value = getattr(settings, opt.attr)
        out[opt.env] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def worker_settings(settings: Settings, index: int, port: int) -> Settings:
    """What worker `index` runs with: one process, the shared port, the sink in worker 0 only."""
    return replace(settings, workers=1, http_port=port, sink=settings.sink and index == 0)


def worker_env(
    settings: Settings, index: int, port: int, metrics_dir: str, base: Mapping[str, str]
) -> dict[str, str]:
    """The complete environment of worker `index` (settings travel here, not on argv)."""
    env = dict(base)
    env.update(settings_env(worker_settings(settings, index, port)))
    env[MULTIPROC_ENV] = metrics_dir
    return env


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) the port with SO_REUSEPORT: fails fast when someone else holds it,
    resolves port 0, and keeps the port ours between worker restarts."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


@dataclass
class _Slot:
    """One worker position; its process changes when a worker is replaced."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Starts, watches, replaces and finally drains the HTTP worker processes."""

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._base_env = dict(os.environ if env is None else env)
        self._slots = [_Slot(i) for i in range(settings.workers)]
        self._stop_signals = 0
        self._port = settings.http_port
        self._metrics_dir = ""
        self._parent_r = -1
        self._parent_w = -1

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signals += 1

    def _spawn(self, slot: _Slot) -> None:
        env = worker_env(self.settings, slot.index, self._port, self._metrics_dir, self._base_env)
        cmd = [sys.executable, "-m", "scoreboard.supervisor", str(slot.index), str(self._parent_r)]
        slot.proc = subprocess.Popen(
            cmd,
            env=env,
            pass_fds=(self._parent_r,),
            # Own process group: a terminal's Ctrl-C reaches only the supervisor, which
            # then asks each worker once to drain (a second signal would cut the drain).
            process_group=0,
        )
        slot.started = time.monotonic()
        slot.pids.append(slot.proc.pid)
        logs.event(
            logger,
            f"worker {slot.index} started",
            {"worker": slot.index, "workerPid": slot.proc.pid},
        )

    def _reap(self, slot: _Slot) -> int | None:
        """The exit code of the slot's process when it has ended, else None."""
        if slot.proc is None:
            return None
        code = slot.proc.poll()
        if code is None:
            return None
        pid = slot.proc.pid
        slot.proc = None
        self._mark_dead(pid)
        return code

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        # Drops the dead process's live gauges (stream clients); its counters stay
        # in the sums so that totals never go backwards.
        multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _watch(self) -> int | None:
        """One pass over the slots: replace dead workers. An exit code ends the supervisor."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.proc is None:
                if slot.restart_at and now >= slot.restart_at:
                    slot.restart_at = 0.0
                    self._spawn(slot)
                continue
            pid = slot.proc.pid
            code = self._reap(slot)
            if code is None:
                continue
            lived = now - slot.started
            if code == EXIT_CONFIG:
                logger.error("worker %d exited with a configuration error; stopping", slot.index)
                return EXIT_CONFIG
            slot.failures = slot.failures + 1 if lived < STABLE_AFTER_S else 0
            delay = (
                min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (slot.failures - 1))
                if slot.failures
                else 0.0
            )
            logs.event(
                logger,
                f"worker {slot.index} died; replacing it",
                {
                    "worker": slot.index,
                    "workerPid": pid,
                    "exitCode": code,
                    "livedS": round(lived, 3),
                    "restartInS": delay,
                },
                logging.WARNING,
            )
            slot.restart_at = now + delay if delay else 0.0
            if not delay:
                self._spawn(slot)
        return None

    def _drain(self) -> None:
        """SIGTERM every worker, wait for their graceful shutdown, kill what is left."""
        live = [s for s in self._slots if s.proc is not None]
        logger.info("draining %d workers", len(live))
        for slot in live:
            assert slot.proc is not None
            slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        signals_seen = self._stop_signals
        while any(s.proc is not None for s in self._slots):
            impatient = self._stop_signals > signals_seen
            for slot in self._slots:
                if slot.proc is None:
                    continue
                if impatient or time.monotonic() > deadline:
                    logger.warning("worker %d did not drain in time; killing it", slot.index)
                    slot.proc.kill()
                    slot.proc.wait()
                pid = slot.proc.pid
                code = self._reap(slot)
                if code is not None:
                    logs.event(
                        logger,
                        f"worker {slot.index} stopped",
                        {"worker": slot.index, "workerPid": pid, "exitCode": code},
                    )
            time.sleep(POLL_S)

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; returns the exit code."""
        reserved = _reserve(self.settings.http_host, self.settings.http_port)
        self._port = reserved.getsockname()[1]
        self._metrics_dir = tempfile.mkdtemp(prefix="scoreboard-metrics-")
        self._parent_r, self._parent_w = os.pipe()
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        code = 0
        try:
            logs.event(
                logger,
                f"supervising {len(self._slots)} HTTP workers on "
                f"http://{self.settings.http_host}:{self._port}",
                {"workers": len(self._slots), "port": self._port},
            )
            for slot in self._slots:
                self._spawn(slot)
            while not self._stop_signals:
                result = self._watch()
                if result is not None:
                    code = result
                    break
                time.sleep(POLL_S)
        finally:
            self._drain()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._parent_w)
            os.close(self._parent_r)
            reserved.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            logger.info("all workers stopped")
        return code


def supervise(settings: Settings) -> int:
    """Run `settings.workers` HTTP workers on one port until SIGTERM/SIGINT."""
    if settings.embedded_redis:
        raise ConfigError(
            "SCOREBOARD_WORKERS > 1 needs SCOREBOARD_REDIS_URL: the embedded store lives "
            "inside one process, so several workers would each have their own board"
        )
    return Supervisor(settings).run()


# --- the worker side --------------------------------------------------------------------


def _watch_parent(fd: int) -> Any:
    """An on_startup hook: when the supervisor is gone (its pipe end closes), shut down."""
    import asyncio

    from aiohttp import web

    async def hook(app: web.Application) -> None:
        loop = asyncio.get_running_loop()

        def readable() -> None:
            if os.read(fd, 1):
                return
            loop.remove_reader(fd)
            logger.warning("the supervisor is gone; shutting down")
            signal.raise_signal(signal.SIGTERM)

        loop.add_reader(fd, readable)

    return hook


def run_worker(index: int, parent_fd: int, env: Mapping[str, str]) -> int:
    """Serve as worker `index` with the settings in `env` until SIGTERM."""
    from .http.app import create_app
    from .http.runner import run_app
    from .serve import install_uvloop, settle_gc

    try:
        settings = Settings.from_env(env).with_secrets()
    except ConfigError as e:
        print(f"scoreboard: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(settings.log_level, settings.log_format)
    logs.tag(worker=index, pid=os.getpid())
    install_uvloop()
    app = create_app(settings)
    app.on_startup.append(_watch_parent(parent_fd))
    app.on_startup.append(settle_gc)

    def listening() -> None:
        logs.event(
            logger,
            f"worker {index} listening on http://{settings.http_host}:{settings.http_port}",
            {"sink": settings.sink},
        )

    run_app(
        app,
        host=settings.http_host,
        port=settings.http_port,
        reuse_port=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        listening=listening,
    )
    return 0


def _main(argv: list[str]) -> int:
    index, parent_fd = int(argv[0]), int(argv[1])
    # The supervisor's own signal handling decides when workers stop; a terminal's
    # SIGINT does not reach this process group, SIGTERM from the supervisor does.
    return run_worker(index, parent_fd, os.environ)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
