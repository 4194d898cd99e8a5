"""Helpers of the live-stream tests: SSE reading, increments, unique boards."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from scoreboard.config import Settings
from scoreboard.http.app import create_app
from scoreboard.http.state import STREAM_OPTIONS
from scoreboard.live import StreamOptions

from .conftest import Tokens


def new_board() -> str:
    """A board id of this test alone: Pub/Sub channels are shared by every db and test run."""
    return f"t-{secrets.token_hex(6)}"


def prefix(board: str | None) -> str:
    return "" if board is None else f"/boards/{board}"


def live_app(settings: Settings, **options: Any) -> web.Application:
    """The app with shortened stream tunables (ping interval, stall bound, ...)."""
    app = create_app(settings)
    app[STREAM_OPTIONS] = replace(StreamOptions(), **options)
    return app


async def read_event(content: aiohttp.StreamReader, within: float = 2.0) -> str:
    """The next SSE block (event or comment) including its blank line, as text."""
    raw = await asyncio.wait_for(content.readuntil(b"\n\n"), within)
    return raw.decode()


async def next_event(content: aiohttp.StreamReader, kind: str, within: float = 2.0) -> str:
    """Skip blocks until one of `event: kind` (pings and other events are skipped)."""
    async with asyncio.timeout(within):
        while True:
            block = await read_event(content, within)
            if f"\nevent: {kind}\n" in f"\n{block}":
                return block


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Wait until `predicate()` holds (checked every 20 ms); TimeoutError after `within` s."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def event_data(block: str) -> str:
    return next(line[6:] for line in block.splitlines() if line.startswith("data: "))


async def increment(
    client: TestClient[Any, Any] | aiohttp.ClientSession,
    tokens: Tokens,
    user: str,
    delta: int,
    board: str | None = None,
    base: str = "",
) -> dict[str, Any]:
    headers, body = tokens.request(user, delta)
    async with client.post(
        f"{base}{prefix(board)}/scores/increment", json=body, headers=headers
    ) as r:
        assert r.status == 200, await r.text()
        result: dict[str, Any] = await r.json()
        return result


async def top_body(
    client: TestClient[Any, Any] | aiohttp.ClientSession, board: str | None = None, base: str = ""
) -> str:
    async with client.get(f"{base}{prefix(board)}/scores/top") as r:
        assert r.status == 200
        return await r.text()


_ID = re.compile(rb"(?m)^id: (\d+)$")


class RawSse:
    """A minimal SSE client on a raw socket: records when it saw each top version."""

    def __init__(self, host: str, port: int | None, path: str) -> None:
        assert port is not None
        self.host, self.port, self.path = host, port, path
        self.seen: dict[int, float] = {}
        self.version = -1
        self.ended = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(f"GET {self.path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head

    async def run(self) -> None:
        """Read chunks until the server ends the stream."""
        assert self._reader is not None
        try:
            while True:
                block = await self._reader.readuntil(b"\n\n\r\n")
                now = time.monotonic()
                for match in _ID.finditer(block):
                    version = int(match.group(1))
                    self.seen.setdefault(version, now)
                    self.version = max(self.version, version)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended.set()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


WS_UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def stalled_client(host: str, port: int | None, path: str, headers: str = "") -> socket.socket:
    """A client that sends its request, then never reads: a tiny receive window fills at once."""
    assert port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting, so the advertised window stays small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect((host, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
    return sock
