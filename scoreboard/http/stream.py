"""Live routes: Server-Sent Events and WebSocket streams of a board's top-10 and a user's scores."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import WSMsgType, web
from aiohttp.http import HttpVersion11
from aiohttp_sse import EventSourceResponse

from .. import auth
from ..errors import BadRequest
from ..live import SSE, WS, Broadcaster, Client, Frame, StreamOptions
from . import spec
from .middleware import stamp
from .scores import board_id
from .state import BROADCASTER, HUB, METRICS, SETTINGS, STREAM_OPTIONS

logger = logging.getLogger(__name__)

# A WebSocket client only ever sends small control messages.
WS_MAX_MESSAGE = 4096


def _query_user(request: web.Request) -> str | None:
    values = request.query.getall("userId", [])
    if not values:
        return None
    user = auth.parse_uuid(values[0]) if len(values) == 1 else None
    if user is None:
        raise BadRequest("userId must be one UUID")
    return user


def _peer(request: web.Request) -> str:
    return request.remote or "unknown"


async def sse(request: web.Request) -> web.StreamResponse:
    """GET /scores/stream: `retry`, the current top at once, then every top-10 change."""
    board = board_id(request)
    user = _query_user(request)
    live = request.app[BROADCASTER]
    opts = live.options
    client = live.join(board, _peer(request), SSE, user)
    try:
        if user is not None:
            # Score events flow from the first one after the snapshot on.
            await live.hub.scores_ready()
        # Read before the response starts, so a Redis failure is still a proper error response.
        # The client is already joined: a change arriving meanwhile is held for it, not lost.
        first = await live.snapshot(board)
        # Last-Event-ID needs no handling: every (re)connect starts with the current snapshot,
        # and the header's value is never parsed, so no value can break this.
        resp = EventSourceResponse(
            sep="\n", ping_interval=opts.ping_interval_s, send_timeout=opts.stall_timeout_s
        )
        stamp(request, resp)
        writer = await resp.prepare(request)
        transport = request.transport
        if writer is None or transport is None:
            return resp
        client.attach(
            transport,
            writer,
            resp.stop_streaming,
            chunked=request.version >= HttpVersion11,
        )
        await resp.write(b"retry: %d\n\n%b" % (opts.retry_ms, first.sse))
        client.start(first)
        await resp.wait()
        return resp
    finally:
        live.leave(client)


def _ws_error(message: str) -> str:
    return orjson.dumps({"type": "error", "error": "bad_request", "message": message}).decode()


async def _ws_receive(ws: web.WebSocketResponse, live: Broadcaster, client: Client) -> None:
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            await ws.send_str(_ws_error("messages are JSON text"))
            continue
        try:
            body = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or body.keys() != {"subscribe"}:
            await ws.send_str(_ws_error('send {"subscribe": "<user uuid>"} or {"subscribe": null}'))
            continue
        target = body["subscribe"]
        user = None if target is None else auth.parse_uuid(target)
        if target is not None and user is None:
            await ws.send_str(_ws_error("subscribe needs a user UUID"))
            continue
        live.subscribe(client, user)
        if user is not None:
            await live.hub.scores_ready()


async def ws(request: web.Request) -> web.StreamResponse:
    """GET /scores/ws: the stream's events as JSON text messages; {"subscribe": uuid} from the client."""
    board = board_id(request)
    user = _query_user(request)
    live = request.app[BROADCASTER]
    opts = live.options
    sock = web.WebSocketResponse(
        heartbeat=opts.ping_interval_s, compress=False, max_msg_size=WS_MAX_MESSAGE
    )
    if not sock.can_prepare(request).ok:
        raise BadRequest("this route needs a WebSocket upgrade")
    client = live.join(board, _peer(request), WS, user)
    try:
        if user is not None:
            await live.hub.scores_ready()
        first = await live.snapshot(board)
        stamp(request, sock)
        writer = await sock.prepare(request)
        transport = request.transport
        if transport is None:
            return sock

        def close() -> None:
            if not sock.closed:
                task = asyncio.create_task(sock.close(code=1001, message=b"going away"))
                _background.add(task)
                task.add_done_callback(_background.discard)

        client.attach(transport, writer, close, chunked=False)
        await sock.send_frame(first.ws_payload, WSMsgType.TEXT)
        client.start(first)
        await _ws_receive(sock, live, client)
        return sock
    finally:
        live.leave(client)


_background: set[asyncio.Task[bool]] = set()


async def _live_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    live = Broadcaster(
        app[HUB],
        app[METRICS],
        app.get(STREAM_OPTIONS) or StreamOptions(),
        max_clients=settings.stream_max_clients,
        max_clients_per_ip=settings.stream_max_clients_per_ip,
    )
    app[BROADCASTER] = live
    app[HUB].add_listener(live.on_message)
    sweeper = asyncio.create_task(live.sweep(), name="live-sweep")
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await live.stop()


async def _on_shutdown(app: web.Application) -> None:
    live = app.get(BROADCASTER)
    if live is not None:
        live.close_all()
        # Let the handlers write their final bytes (SSE end of body, WebSocket close frame).
        await asyncio.sleep(0)


def setup(app: web.Application, options: StreamOptions | None = None) -> None:
    """Wire the broadcaster into the app's lifecycle (after the hub exists)."""
    if options is not None:
        app[STREAM_OPTIONS] = options
    app.cleanup_ctx.append(_live_ctx)
    app.on_shutdown.append(_on_shutdown)


def add_routes(app: web.Application, prefix: str) -> None:
    """The live routes under `prefix`: register before the `{userId}` routes."""
    spec.register(app, "stream", sse, prefix)
    spec.register(app, "ws", ws, prefix)


__all__ = ["Frame", "add_routes", "setup"]
