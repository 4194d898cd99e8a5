"""Find or start the Redis and PostgreSQL servers the tests talk to.

The machine's own servers (127.0.0.1:6379 and :5432) are used when they answer;
otherwise throwaway ones are started from the installed binaries. Outage tests
always start their own throwaway server so the shared ones are never stopped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "The tests need Redis and PostgreSQL. None answered on 127.0.0.1:6379 / :5432 and no "
    "binaries were found to start throwaway ones. Install them, e.g. on Debian/Ubuntu: "
    "apt-get install redis-server postgresql"
)


class ServerUnavailable(RuntimeError):
    pass


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"{what} did not come up within {timeout} s")


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


@dataclass
class RedisServer:
    """A throwaway redis-server on a loopback port."""

    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    dir: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = find_binary("redis-server")
        if binary is None:
            raise ServerUnavailable(INSTALL_HINT)
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="sb-redis-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(lambda: port_open(self.port), 10, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _unprivileged() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: the uid/gid to run it as instead."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
    raise ServerUnavailable("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on a loopback port (trust auth)."""

    port: int = field(default_factory=free_port)
    dir: str = ""
    _initialised: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        ids = _unprivileged()

        def demote() -> None:
            if ids is not None:
                os.setgid(ids[1])
                os.setuid(ids[0])

        return subprocess.run(
            cmd, check=check, preexec_fn=demote, capture_output=True, cwd=self.dir or "/"
        )

    def start(self) -> PostgresServer:
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise ServerUnavailable(INSTALL_HINT)
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="sb-pg-")
            ids = _unprivileged()
            if ids is not None:
                os.chown(self.dir, *ids)
        data = os.path.join(self.dir, "data")
        if not self._initialised:
            self._run(
                initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"
            )
            self._initialised = True
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start"
        )
        _wait(lambda: port_open(self.port), 15, "postgres")
        return self

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = find_binary("pg_ctl")
        if pg_ctl and self._initialised:
            self._run(
                pg_ctl, "-D", os.path.join(self.dir, "data"), "-m", mode, "-w", "stop", check=False
            )

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def base_servers() -> Iterator[tuple[str, str]]:
    """(redis base URL, PostgreSQL admin URL): the machine's, or throwaway ones."""
    started: list[RedisServer | PostgresServer] = []
    try:
        redis_url = os.environ.get("SCOREBOARD_TEST_REDIS_URL")
        if not redis_url:
            if port_open(6379):
                redis_url = "redis://127.0.0.1:6379"
            else:
                r = RedisServer().start()
                started.append(r)
                redis_url = f"redis://127.0.0.1:{r.port}"
        pg_url = os.environ.get("SCOREBOARD_TEST_DATABASE_URL")
        if not pg_url:
            if port_open(5432):
                pg_url = "postgresql://postgres@127.0.0.1:5432/postgres"
            else:
                p = PostgresServer().start()
                started.append(p)
                pg_url = p.url
        yield redis_url.rstrip("/"), pg_url
    finally:
        for server in reversed(started):
            server.cleanup()


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
