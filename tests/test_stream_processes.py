"""Live updates across real `scoreboard serve` processes sharing one Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson

from .conftest import Tokens, new_user
from .processes import serving
from .streams import event_data, increment, new_board, next_event, read_event


async def test_an_increment_on_one_process_reaches_sse_and_ws_clients_of_another(
    redis_url: str, tmp_path: Path, tokens: Tokens
) -> None:
    board = new_board()
    with serving(redis_url, tmp_path, n=2) as (a, b):
        async with aiohttp.ClientSession() as session:
            sse = await session.get(f"{b.base}/boards/{board}/scores/stream")
            assert sse.status == 200
            assert await read_event(sse.content) == "retry: 2000\n\n"
            assert (await read_event(sse.content)).startswith("id: 0\nevent: top\n")
            ws = await session.ws_connect(f"{b.base}/boards/{board}/scores/ws")
            assert (await ws.receive_json(timeout=2))["type"] == "top"
            # The first change proves B's subscription is up (it may still be starting).
            await increment(session, tokens, new_user(), 1, board, base=a.base)
            await next_event(sse.content, "top", within=10)
            assert (await ws.receive_json(timeout=10))["type"] == "top"

            user = new_user()
            start = time.monotonic()
            await increment(session, tokens, user, 50, board, base=a.base)
            block = await next_event(sse.content, "top", within=1)
            sse_s = time.monotonic() - start
            message = await ws.receive_json(timeout=1)
            ws_s = time.monotonic() - start
            assert sse_s < 1 and ws_s < 1
            assert orjson.loads(event_data(block))["entries"][0]["userId"] == user
            assert message["type"] == "top" and message["entries"][0]["userId"] == user
            await ws.close()
            sse.close()


async def test_sigterm_closes_every_stream_and_exits(
    redis_url: str, tmp_path: Path, tokens: Tokens
) -> None:
    board = new_board()
    with serving(redis_url, tmp_path) as (server,):
        async with aiohttp.ClientSession() as session:
            sse = await session.get(f"{server.base}/boards/{board}/scores/stream")
            await read_event(sse.content)
            await read_event(sse.content)
            ws = await session.ws_connect(f"{server.base}/boards/{board}/scores/ws")
            await ws.receive_json(timeout=2)
            assert server.proc is not None
            start = time.monotonic()
            server.proc.terminate()
            # The SSE body ends properly (a clean end of the chunked body, no error)...
            assert await asyncio.wait_for(sse.content.read(), 10) == b""
            # ...and the WebSocket gets a close frame saying the server is going away.
            message = await ws.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001
            await ws.close()
            code = await asyncio.to_thread(server.proc.wait, 15)
            assert code == 0
            assert time.monotonic() - start < 10
