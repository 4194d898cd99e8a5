"""Helpers of the live-stream tests: SSE reading, increments, unique boards."""

from __future__ import annotations

import asyncio
import secrets
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
