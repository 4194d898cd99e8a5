"""Run `scoreboard serve` as a real subprocess for the tests that need whole processes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .conftest import ACTION_SECRET, JWT_SECRET
from .servers import free_port, port_open


class ServeProcess:
    """One `scoreboard serve` on a free loopback port, stopped (SIGTERM) when done."""

    def __init__(self, redis_url: str, data_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / f"serve-{self.port}.log"
        self.env = {
            **os.environ,
            "SCOREBOARD_REDIS_URL": redis_url,
            "SCOREBOARD_JWT_SECRET": JWT_SECRET,
            "SCOREBOARD_ACTION_SECRET": ACTION_SECRET,
            "SCOREBOARD_HTTP_HOST": "127.0.0.1",
            "SCOREBOARD_HTTP_PORT": str(self.port),
            "SCOREBOARD_SINK": "false",
            "SCOREBOARD_DATA_DIR": str(data_dir / f"data-{self.port}"),
            "SCOREBOARD_LOG_FORMAT": "json",
            "SCOREBOARD_LOG_LEVEL": "warning",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> ServeProcess:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scoreboard", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code


@contextlib.contextmanager
def serving(redis_url: str, data_dir: Path, n: int = 1, **env: str) -> Iterator[list[ServeProcess]]:
    """`n` serve processes sharing one Redis."""
    procs: list[ServeProcess] = []
    try:
        for _ in range(n):
            procs.append(ServeProcess(redis_url, data_dir, **env).start())
        yield procs
    finally:
        for p in procs:
            p.stop()
