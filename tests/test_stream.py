"""The live routes over HTTP: SSE wire text, pings, Last-Event-ID, users, limits, WebSocket."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scoreboard.config import Settings
from scoreboard.http.state import BROADCASTER
from scoreboard.live import StreamOptions

from .conftest import AiohttpClient, Tokens, new_user, settings_with
from .streams import (
    event_data,
    eventually,
    increment,
    live_app,
    new_board,
    next_event,
    read_event,
    top_body,
)


@pytest.fixture
async def live(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(live_app(settings, ping_interval_s=0.2))


async def test_connect_sends_retry_then_the_current_top(
    live: TestClient[Any, Any], tokens: Tokens
) -> None:
    board = new_board()
    user = new_user()
    await increment(live, tokens, user, 5, board)
    expected = await top_body(live, board)
    async with live.get(f"/boards/{board}/scores/stream") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache"
        assert r.headers["X-Request-ID"]
        assert await read_event(r.content) == "retry: 2000\n\n"
        assert await read_event(r.content) == f"id: 1\nevent: top\ndata: {expected}\n\n"


async def test_top_and_score_events_wire_text(live: TestClient[Any, Any], tokens: Tokens) -> None:
    board = new_board()
    alice, bob = new_user(), new_user()
    async with live.get(f"/boards/{board}/scores/stream?userId={alice}") as r:
        assert await read_event(r.content) == "retry: 2000\n\n"
        first = await read_event(r.content)
        assert first.startswith('id: 0\nevent: top\ndata: {"entries":[],"version":0,"updatedAt":"')
        result = await increment(live, tokens, alice, 7, board)
        score = await next_event(r.content, "score")
        expected_score = orjson.dumps(
            {
                "userId": alice,
                "score": 7,
                "rank": 1,
                "delta": 7,
                "eventId": result["eventId"],
            }
        ).decode()
        assert score == f"event: score\ndata: {expected_score}\n\n"
        top = await next_event(r.content, "top")
        assert top == f"id: 1\nevent: top\ndata: {await top_body(live, board)}\n\n"
        # Bob's change moves the top but is not Alice's: a top event, no score event.
        await increment(live, tokens, bob, 9, board)
        top = await read_event(r.content)
        while top.startswith(":"):
            top = await read_event(r.content)
        assert top == f"id: 2\nevent: top\ndata: {await top_body(live, board)}\n\n"
        data = orjson.loads(event_data(top))
        assert [e["userId"] for e in data["entries"]] == [bob, alice]


async def test_ping_comment_on_the_configured_interval(live: TestClient[Any, Any]) -> None:
    async with live.get(f"/boards/{new_board()}/scores/stream") as r:
        await read_event(r.content)
        await read_event(r.content)
        start = time.monotonic()
        assert await read_event(r.content, within=2) == ": ping\n\n"
        assert await read_event(r.content, within=2) == ": ping\n\n"
        assert time.monotonic() - start < 1.5


def test_default_ping_interval_is_at_most_15_seconds() -> None:
    assert 0 < StreamOptions().ping_interval_s <= 15


@pytest.mark.parametrize(
    "last_event_id",
    ["0", "999999999999", "-1", "not-a-number", "x" * 8000, "\u00e9\u00fc garbage \t ;;"],
)
async def test_last_event_id_gets_the_current_snapshot_at_once(
    live: TestClient[Any, Any], tokens: Tokens, last_event_id: str
) -> None:
    board = new_board()
    await increment(live, tokens, new_user(), 3, board)
    await increment(live, tokens, new_user(), 4, board)
    expected = await top_body(live, board)
    headers = {"Last-Event-ID": last_event_id.encode("utf-8").decode("latin-1")}
    async with live.get(f"/boards/{board}/scores/stream", headers=headers) as r:
        assert r.status == 200
        assert await read_event(r.content, within=1) == "retry: 2000\n\n"
        assert await read_event(r.content, within=1) == f"id: 2\nevent: top\ndata: {expected}\n\n"


async def test_huge_last_event_id_gets_the_snapshot_and_breaks_nothing(
    live: TestClient[Any, Any], tokens: Tokens
) -> None:
    board = new_board()
    await increment(live, tokens, new_user(), 2, board)
    expected = await top_body(live, board)
    async with live.get(
        f"/boards/{board}/scores/stream", headers={"Last-Event-ID": "9" * 100 * 1024}
    ) as r:
        assert r.status == 200
        assert await read_event(r.content, within=1) == "retry: 2000\n\n"
        assert await read_event(r.content, within=1) == f"id: 1\nevent: top\ndata: {expected}\n\n"
    # The process keeps streaming to everyone else.
    async with live.get(f"/boards/{board}/scores/stream", headers={"Last-Event-ID": "1"}) as r:
        assert r.status == 200
        assert await read_event(r.content) == "retry: 2000\n\n"
        await read_event(r.content)
        await increment(live, tokens, new_user(), 1, board)
        await next_event(r.content, "top")


@pytest.mark.parametrize("query", ["userId=nope", "userId=", f"userId={new_user()}&userId=x"])
async def test_bad_user_id_is_a_contract_400(live: TestClient[Any, Any], query: str) -> None:
    async with live.get(f"/scores/stream?{query}") as r:
        assert r.status == 400
        body = await r.json()
        assert body["error"] == "bad_request" and body["requestId"] == r.headers["X-Request-ID"]
    async with live.get(f"/scores/ws?{query}") as r:
        assert r.status == 400


async def test_bad_board_id_is_a_contract_400(live: TestClient[Any, Any]) -> None:
    async with live.get("/boards/NOT_OK/scores/stream") as r:
        assert r.status == 400
        assert (await r.json())["error"] == "bad_request"


async def test_global_stream_route_is_not_taken_for_a_user_id(
    live: TestClient[Any, Any], tokens: Tokens
) -> None:
    await increment(live, tokens, new_user(), 2)
    async with live.get("/scores/stream") as r:
        assert r.status == 200
        await read_event(r.content)
        block = await read_event(r.content)
        assert block == f"id: 1\nevent: top\ndata: {await top_body(live)}\n\n"


async def test_boards_are_separate(live: TestClient[Any, Any], tokens: Tokens) -> None:
    mine, other = new_board(), new_board()
    async with live.get(f"/boards/{mine}/scores/stream") as r:
        await read_event(r.content)
        await read_event(r.content)
        await increment(live, tokens, new_user(), 5, other)
        await increment(live, tokens, new_user(), 6, mine)
        data = orjson.loads(event_data(await next_event(r.content, "top")))
        assert [e["score"] for e in data["entries"]] == [6]


async def test_an_erased_user_vanishes_from_the_stream_at_once(
    live: TestClient[Any, Any], tokens: Tokens
) -> None:
    board = new_board()
    alice, bob = new_user(), new_user()
    await increment(live, tokens, alice, 5, board)
    await increment(live, tokens, bob, 3, board)
    async with live.get(f"/boards/{board}/scores/stream") as r:
        await read_event(r.content)
        await read_event(r.content)
        admin = tokens.user(new_user(), "scores:admin")
        async with live.delete(
            f"/boards/{board}/scores/{alice}", headers={"Authorization": f"Bearer {admin}"}
        ) as deleted:
            assert deleted.status == 204
        block = await next_event(r.content, "top")
        assert block == f"id: 3\nevent: top\ndata: {await top_body(live, board)}\n\n"
        assert [e["userId"] for e in orjson.loads(event_data(block))["entries"]] == [bob]


async def test_a_reseed_message_refreshes_the_top(
    live: TestClient[Any, Any], tokens: Tokens
) -> None:
    board = new_board()
    await increment(live, tokens, new_user(), 5, board)
    async with live.get(f"/boards/{board}/scores/stream") as r:
        await read_event(r.content)
        await read_event(r.content)
        # What a reseed's swap does to the live board, as the reseeding process publishes it.
        store = live.app[BROADCASTER].hub._board
        keys = store.keys(board)
        await store.client.hset(keys.top, mapping={"v": 9, "d": "[]", "t": int(time.time() * 1000)})
        message = orjson.dumps(
            {"type": "reseed", "boardId": board, "version": 9, "topChanged": True}
        )
        await store.client.publish(f"scoreboard.updates.{board}", message)
        await store.client.publish(f"scoreboard.top.{board}", message)
        block = await next_event(r.content, "top")
        assert block.startswith("id: 9\n")
        assert orjson.loads(event_data(block))["entries"] == []


async def test_client_limits_answer_503_with_retry_after(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await aiohttp_client(
        live_app(settings_with(settings, stream_max_clients=3, stream_max_clients_per_ip=2))
    )
    board = new_board()
    a = await client.get(f"/boards/{board}/scores/stream")
    b = await client.get(f"/boards/{board}/scores/stream")
    assert a.status == b.status == 200
    over_ip = await client.get(f"/boards/{board}/scores/stream")
    assert over_ip.status == 503
    assert int(over_ip.headers["Retry-After"]) > 0
    body = await over_ip.json()
    assert body["error"] == "too_many_clients" and body["requestId"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/boards/{board}/scores/ws")
    assert refused.value.status == 503
    metrics = await (await client.get("/metrics")).text()
    assert 'scoreboard_stream_clients{transport="sse"} 2.0' in metrics
    a.close()
    # The slot frees once the server notices the hang-up.
    async with asyncio.timeout(5):
        while True:
            again = await client.get(f"/boards/{board}/scores/stream")
            if again.status == 200:
                break
            again.release()
            await asyncio.sleep(0.1)
    metrics = await (await client.get("/metrics")).text()
    assert 'scoreboard_stream_clients{transport="sse"} 2.0' in metrics
    again.close()
    b.close()


async def test_total_client_limit(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    client = await aiohttp_client(
        live_app(settings_with(settings, stream_max_clients=2, stream_max_clients_per_ip=10))
    )
    board = new_board()
    streams = [await client.get(f"/boards/{board}/scores/stream") for _ in range(2)]
    r = await client.get(f"/boards/{board}/scores/stream")
    assert r.status == 503 and r.headers["Retry-After"]
    assert (await r.json())["error"] == "too_many_clients"
    for s in streams:
        s.close()


async def test_exact_bytes_on_the_wire(live: TestClient[Any, Any], tokens: Tokens) -> None:
    """Frames are chunk-framed by the broadcaster itself: check the raw HTTP/1.1 body."""
    board = new_board()
    host, port = live.server.host, live.server.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET /boards/{board}/scores/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii")
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        first = await asyncio.wait_for(reader.readuntil(b"\n\n\r\n"), 2)
        expected = b"retry: 2000\n\n" + (
            b"id: 0\nevent: top\ndata: " + (await top_body(live, board)).encode() + b"\n\n"
        )
        assert first == b"%x\r\n%b\r\n" % (len(expected), expected)
        await increment(live, tokens, new_user(), 4, board)
        event = f"id: 1\nevent: top\ndata: {await top_body(live, board)}\n\n".encode()
        block = await asyncio.wait_for(reader.readuntil(b"\n\n\r\n"), 2)
        while block.endswith(b": ping\n\n\r\n"):
            block = await asyncio.wait_for(reader.readuntil(b"\n\n\r\n"), 2)
        assert block == b"%x\r\n%b\r\n" % (len(event), event)
    finally:
        writer.close()


async def test_http10_client_gets_an_unchunked_stream(
    live: TestClient[Any, Any], tokens: Tokens
) -> None:
    board = new_board()
    reader, writer = await asyncio.open_connection(live.server.host, live.server.port)
    try:
        writer.write(f"GET /boards/{board}/scores/stream HTTP/1.0\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert b"chunked" not in head.lower()
        assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 2) == b"retry: 2000\n\n"
        await asyncio.wait_for(reader.readuntil(b"\n\n"), 2)
        await increment(live, tokens, new_user(), 4, board)
        block = await asyncio.wait_for(reader.readuntil(b"\n\n"), 2)
        while block == b": ping\n\n":
            block = await asyncio.wait_for(reader.readuntil(b"\n\n"), 2)
        assert block == f"id: 1\nevent: top\ndata: {await top_body(live, board)}\n\n".encode()
    finally:
        writer.close()


# WebSocket


async def test_websocket_top_score_and_subscribe(
    live: TestClient[Any, Any], tokens: Tokens
) -> None:
    board = new_board()
    alice = new_user()
    async with live.ws_connect(
        f"/boards/{board}/scores/ws", headers={"X-Request-ID": "ws-upgrade-1"}
    ) as ws:
        assert ws._response.headers["X-Request-ID"] == "ws-upgrade-1"
        first = await ws.receive_json(timeout=2)
        assert first["type"] == "top" and first["version"] == 0 and first["entries"] == []
        await ws.send_json({"subscribe": "not-a-uuid"})
        error = await ws.receive_json(timeout=2)
        assert error == {
            "type": "error",
            "error": "bad_request",
            "message": "subscribe needs a user UUID",
        }
        await ws.send_str("{not json")
        assert (await ws.receive_json(timeout=2))["type"] == "error"
        metrics = await (await live.get("/metrics")).text()
        assert 'scoreboard_stream_clients{transport="ws"} 1.0' in metrics
        await ws.send_json({"subscribe": alice})
        await asyncio.sleep(0.05)
        result = await increment(live, tokens, alice, 11, board)
        got = [await ws.receive_json(timeout=2), await ws.receive_json(timeout=2)]
        score = next(m for m in got if m["type"] == "score")
        top = next(m for m in got if m["type"] == "top")
        assert score == {
            "type": "score",
            "userId": alice,
            "score": 11,
            "rank": 1,
            "delta": 11,
            "eventId": result["eventId"],
        }
        expected = orjson.loads(await top_body(live, board))
        assert top == {"type": "top", **expected}
        # Unsubscribed: top events only.
        await ws.send_json({"subscribe": None})
        await asyncio.sleep(0.05)
        await increment(live, tokens, alice, 1, board)
        message = await ws.receive_json(timeout=2)
        assert message["type"] == "top" and message["version"] == 2
        # (the receive timeout restarts on every server ping: bound the whole wait instead)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive_json(), 0.3)


async def test_websocket_user_in_query(live: TestClient[Any, Any], tokens: Tokens) -> None:
    board = new_board()
    alice = new_user()
    async with live.ws_connect(f"/boards/{board}/scores/ws?userId={alice}") as ws:
        await ws.receive_json(timeout=2)
        await increment(live, tokens, alice, 3, board)
        types = {(await ws.receive_json(timeout=2))["type"] for _ in range(2)}
        assert types == {"top", "score"}


async def test_websocket_server_pings(live: TestClient[Any, Any]) -> None:
    async with live.ws_connect(f"/boards/{new_board()}/scores/ws", autoping=False) as ws:
        await ws.receive_json(timeout=2)
        msg = await ws.receive(timeout=2)
        assert msg.type == aiohttp.WSMsgType.PING
        await ws.pong(msg.data)


async def test_websocket_route_needs_an_upgrade(live: TestClient[Any, Any]) -> None:
    async with live.get("/scores/ws") as r:
        assert r.status == 400
        assert (await r.json())["error"] == "bad_request"


# Lifecycle


async def test_graceful_shutdown_closes_every_stream(settings: Settings) -> None:
    app = live_app(settings)
    server = TestServer(app)
    await server.start_server()
    board = new_board()
    session = aiohttp.ClientSession()
    try:
        sse = await session.get(server.make_url(f"/boards/{board}/scores/stream"))
        await read_event(sse.content)
        await read_event(sse.content)
        ws = await session.ws_connect(server.make_url(f"/boards/{board}/scores/ws"))
        await ws.receive_json(timeout=2)
        assert app[BROADCASTER].client_count == 2
        start = time.monotonic()
        closing = asyncio.create_task(server.close())
        # The SSE body ends cleanly, the WebSocket gets "going away".
        assert await asyncio.wait_for(sse.content.read(), 3) == b""
        msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await ws.close()
        await asyncio.wait_for(closing, 5)
        assert time.monotonic() - start < 3
        assert app[BROADCASTER].client_count == 0
    finally:
        await session.close()
        await server.close()


async def test_peer_hang_up_is_noticed_without_a_write(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await aiohttp_client(live_app(settings, ping_interval_s=60, sweep_interval_s=0.1))
    live = client.app[BROADCASTER]
    sock = socket.create_connection((client.server.host, client.server.port))
    sock.sendall(f"GET /boards/{new_board()}/scores/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await eventually(lambda: live.client_count == 1)
    sock.close()
    await eventually(lambda: live.client_count == 0)


def test_routes_come_before_user_routes(settings: Settings) -> None:
    app = live_app(settings)
    paths = [
        r.get_info().get("formatter") or r.get_info().get("path") for r in app.router.resources()
    ]
    for pfx in ("", "/boards/{boardId}"):
        assert paths.index(f"{pfx}/scores/stream") < paths.index(f"{pfx}/scores/{{userId}}")
        assert paths.index(f"{pfx}/scores/ws") < paths.index(f"{pfx}/scores/{{userId}}")


# The page's files (the browser test drives the page itself)


async def test_page_and_its_files(live: TestClient[Any, Any]) -> None:
    async with live.get("/") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        page = await r.text()
        assert '<script src="/static/app.js" defer></script>' in page
        etag = r.headers["ETag"]
    async with live.get("/", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        async with live.get(f"/static/{name}") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
    for missing in ("/static/nope.js", "/static/index.html", "/static/..%2Fapp.py"):
        async with live.get(missing) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "not_found"
