"""Live fan-out: one broadcaster per process turns board changes into SSE and WebSocket frames.

The hub (one Pub/Sub subscription per process) tells the broadcaster of every
message. A top-changing message makes the broadcaster re-read that board's
top-10 once, however many messages arrive meanwhile (coalesced), encode the
event once as ready-to-send bytes for each kind of connection (SSE, SSE in
HTTP/1.1 chunks, a WebSocket text frame), and write those same bytes to every
client's transport in one synchronous pass: no task, no copy and no encoding
per client and message.

A client whose socket is not keeping up holds at most the newest undelivered
top snapshot (older ones are dropped: coalescing) and a bounded queue of its
own `score` events; a small flusher task delivers them once the socket drains.
A client whose socket stays unwritable longer than the stall bound, or whose
queue overflows, is cut off (it reconnects and gets the snapshot). Nobody
waits for a slow client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import ScoreboardError, TooManyClients
from .hub import CachedTop, Hub
from .metrics import Metrics

logger = logging.getLogger(__name__)

SSE = "sse"
WS = "ws"
TOP_LIMIT = 10
# A snapshot that lags behind a version seen in a message is read again at most this often.
_STALE_READS = 3
_REFRESH_RETRIES = 3
_REFRESH_RETRY_S = 0.2
# Clients written between two yields to the event loop during a fan-out (about 5 ms).
FANOUT_SLICE = 500


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Tunables of the live streams (not part of the contract; tests shorten them)."""

    ping_interval_s: float = 15.0
    retry_ms: int = 2000
    # A client whose socket stays unwritable this long is disconnected.
    stall_timeout_s: float = 10.0
    # Bytes queued in a client's transport above which it counts as not keeping up.
    write_high_water: int = 32 * 1024
    # SO_SNDBUF of stream sockets: bounds kernel memory per client and lets a stalled
    # client show as unwritable within seconds rather than after megabytes (0: kernel's).
    send_buffer: int = 32 * 1024
    # `score` events kept for a client that is not keeping up before it is cut off.
    score_queue: int = 32
    # How often closed connections are looked for (a peer that hung up without a write).
    sweep_interval_s: float = 1.0
    # Retry-After of a 503 when the client limits are reached.
    retry_after_s: int = 5


def sse_event(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One Server-Sent Event; `data` must be one line (compact JSON is)."""
    head = f"id: {event_id}\nevent: {event}\n" if event_id is not None else f"event: {event}\n"
    return head.encode() + b"data: " + data + b"\n\n"


def http_chunk(payload: bytes) -> bytes:
    """`payload` as one HTTP/1.1 chunk (the framing of a chunked response body)."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def ws_text_frame(payload: bytes) -> bytes:
    """`payload` as one final, unmasked WebSocket text frame (server to client)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class Frame:
    """One event encoded once, for each kind of connection."""

    __slots__ = ("data", "is_top", "resync", "sse", "sse_chunked", "version", "ws", "ws_payload")

    def __init__(self, event: str, data: bytes, *, version: int = 0, resync: bool = False) -> None:
        self.is_top = event == "top"
        self.version = version
        self.resync = resync
        self.data = data
        self.sse = sse_event(event, data, str(version) if self.is_top else None)
        self.sse_chunked = http_chunk(self.sse)
        # {"type": "<event>", ...the same fields as the SSE data}
        self.ws_payload = b'{"type":"' + event.encode() + b'",' + data[1:]
        self.ws = ws_text_frame(self.ws_payload)

    @classmethod
    def top(cls, cached: CachedTop, *, resync: bool = False) -> Frame:
        """The `top` event of a board snapshot: the `/scores/top` JSON, id = version."""
        return cls("top", cached.body(0, TOP_LIMIT), version=cached.version, resync=resync)

    @classmethod
    def score(cls, message: dict[str, Any]) -> Frame:
        """A user's `score` event from a Pub/Sub score message."""
        body = {k: message.get(k) for k in ("userId", "score", "rank", "delta", "eventId")}
        return cls("score", orjson.dumps(body))


Closer = Callable[[], None]


class Client:
    """One live connection as the broadcaster sees it: a transport and what it still owes."""

    __slots__ = (
        "_flusher",
        "_live",
        "_scores",
        "_top",
        "board",
        "chunked",
        "closed",
        "ip",
        "kind",
        "last_top",
        "on_close",
        "ready",
        "transport",
        "user",
        "writer",
    )

    def __init__(self, live: Broadcaster, board: str, ip: str, kind: str) -> None:
        self._live = live
        self.board = board
        self.ip = ip
        self.kind = kind
        self.user: str | None = None
        self.transport: asyncio.Transport | None = None
        self.writer: Any = None  # the response's stream writer: its drain() waits for the socket
        self.chunked = False
        self.on_close: Closer | None = None
        self.ready = False
        self.closed = False
        # The data of the last top event written: a top that changes nothing is not sent again
        # (the Pub/Sub message of a change can arrive after a client's connect snapshot showed it).
        self.last_top: bytes | None = None
        self._top: Frame | None = None
        self._scores: deque[Frame] | None = None
        self._flusher: asyncio.Task[None] | None = None

    @property
    def behind(self) -> bool:
        """True while frames are held for this client because its socket is not draining."""
        return self._flusher is not None

    def _bytes(self, frame: Frame) -> bytes:
        if self.kind == WS:
            return frame.ws
        return frame.sse_chunked if self.chunked else frame.sse

    def attach(
        self, transport: asyncio.Transport, writer: Any, on_close: Closer, *, chunked: bool
    ) -> None:
        """Bind the prepared response's transport; frames are held until `start`."""
        self.transport = transport
        self.writer = writer
        self.on_close = on_close
        self.chunked = chunked
        opts = self._live.options
        transport.set_write_buffer_limits(high=opts.write_high_water)
        sock = transport.get_extra_info("socket")
        if opts.send_buffer and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, opts.send_buffer)

    def start(self, first: Frame) -> None:
        """`first` (the connect snapshot) was written: deliver what arrived meanwhile."""
        self.last_top = first.data
        top = self._top
        if top is not None and (top.data == first.data or top.version < first.version):
            self._top = None
        self.ready = True
        if self._top is not None or self._scores:
            self._deliver()

    def offer(self, frame: Frame) -> None:
        """Queue one frame: sent at once when the socket keeps up, else held (coalesced)."""
        if self.closed:
            return
        if frame.is_top:
            if frame.data == self.last_top:
                return
            self._top = frame
        else:
            scores = self._scores
            if scores is None:
                scores = self._scores = deque()
            if len(scores) >= self._live.options.score_queue:
                self.cut_off("score queue overflow")
                return
            scores.append(frame)
        if self.ready and self._flusher is None:
            self._deliver()

    def write_now(self, frame: Frame) -> None:
        """The hot path of a fan-out: straight into the transport unless the client is behind."""
        t = self.transport
        if not self.ready or self._flusher is not None or t is None:
            self.offer(frame)
        elif t.is_closing():
            self.close()
        elif t.get_write_buffer_size() > self._live.options.write_high_water:
            self.offer(frame)
        elif frame.data != self.last_top:
            self.last_top = frame.data
            t.write(self._bytes(frame))

    def _deliver(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            self.close()
        elif t.get_write_buffer_size() > self._live.options.write_high_water:
            self._flusher = asyncio.create_task(self._flush())
        else:
            self._write_pending(t)

    def _write_pending(self, t: asyncio.Transport) -> None:
        scores, self._scores = self._scores, None
        top, self._top = self._top, None
        parts = [self._bytes(f) for f in scores] if scores else []
        if top is not None:
            self.last_top = top.data
            parts.append(self._bytes(top))
        if parts:
            t.write(b"".join(parts))

    async def _flush(self) -> None:
        """Wait for the socket to drain, then deliver what is held; cut off a stalled client."""
        try:
            while self._top is not None or self._scores:
                t = self.transport
                if t is None or t.is_closing():
                    self.cut_off("connection lost while behind")
                    return
                if t.get_write_buffer_size() > self._live.options.write_high_water:
                    await asyncio.wait_for(self.writer.drain(), self._live.options.stall_timeout_s)
                    continue
                self._write_pending(t)
        except TimeoutError:
            self.cut_off("socket unwritable too long")
        except (ConnectionError, RuntimeError, OSError):
            # Lost while behind: typically the kernel's own bound on unacknowledged data
            # (TCP_USER_TIMEOUT, set to the same stall bound) fired first.
            self.cut_off("connection lost while behind")
        finally:
            self._flusher = None

    def cut_off(self, reason: str) -> None:
        """Drop a client that cannot keep up: abort its connection without waiting."""
        if self.closed:
            return
        if self.transport is not None:
            self.transport.abort()
        self._close(reason)

    def close(self) -> None:
        """Stop this client's stream (its handler then returns and calls `leave`)."""
        # A connection that ends while frames wait for it was dropped behind, whoever noticed.
        self._close("connection lost while behind" if self._flusher is not None else None)

    def _close(self, dropped: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        if dropped is not None:
            logger.info("cut off a slow %s client of %s: %s", self.kind, self.board, dropped)
            self._live.cut_offs += 1
        self._top = self._scores = None
        flusher = self._flusher
        if flusher is not None and flusher is not asyncio.current_task():
            flusher.cancel()
        if self.on_close is not None:
            self.on_close()


class _BoardState:
    __slots__ = ("clients", "dirty", "force", "last", "refreshing", "snapshot", "users")

    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self.users: dict[str, set[Client]] = {}
        self.refreshing = False
        self.dirty = False
        self.force = False
        self.last: Frame | None = None
        # The connect snapshot, encoded once per cached top.
        self.snapshot: tuple[CachedTop, Frame] | None = None


class Broadcaster:
    """Every live client of this process, grouped by board; fed by the hub's listener."""

    def __init__(
        self,
        hub: Hub,
        metrics: Metrics,
        options: StreamOptions,
        *,
        max_clients: int,
        max_clients_per_ip: int,
    ) -> None:
        self.hub = hub
        self.options = options
        self._metrics = metrics
        self._max = max_clients
        self._max_per_ip = max_clients_per_ip
        self._boards: dict[str, _BoardState] = {}
        self._per_ip: dict[str, int] = {}
        self._count = 0
        # Clients watching a user's score events: while there are any, the hub receives
        # every score change.
        self._watching = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.cut_offs = 0
        self.broadcasts = 0

    @property
    def client_count(self) -> int:
        return self._count

    def clients(self, board: str) -> tuple[Client, ...]:
        """The clients of one board (for inspection)."""
        state = self._boards.get(board)
        return tuple(state.clients) if state is not None else ()

    # Joining and leaving

    def join(self, board: str, ip: str, kind: str, user: str | None = None) -> Client:
        """Admit a new client (503 past the limits); it receives frames from now on."""
        if self.closing:
            raise TooManyClients("the server is shutting down", self.options.retry_after_s)
        if self._count >= self._max:
            raise TooManyClients(
                "this server has as many live clients as it takes", self.options.retry_after_s
            )
        if self._per_ip.get(ip, 0) >= self._max_per_ip:
            raise TooManyClients(
                "too many live connections from this address", self.options.retry_after_s
            )
        self._count += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        (self._metrics.clients_ws if kind == WS else self._metrics.clients_sse).inc()
        client = Client(self, board, ip, kind)
        state = self._boards.get(board)
        if state is None:
            state = self._boards[board] = _BoardState()
        state.clients.add(client)
        if user is not None:
            self.subscribe(client, user)
        return client

    def leave(self, client: Client) -> None:
        """Forget a client (idempotent); called when its handler ends."""
        client.close()
        state = self._boards.get(client.board)
        if state is None or client not in state.clients:
            return
        self.subscribe(client, None)
        state.clients.discard(client)
        if not state.clients:
            del self._boards[client.board]
        self._count -= 1
        left = self._per_ip[client.ip] - 1
        if left:
            self._per_ip[client.ip] = left
        else:
            del self._per_ip[client.ip]
        (self._metrics.clients_ws if client.kind == WS else self._metrics.clients_sse).dec()

    def subscribe(self, client: Client, user: str | None) -> None:
        """Send `client` the `score` events of `user` (None: of nobody)."""
        state = self._boards.get(client.board)
        if state is None:
            return
        if client.user is not None:
            self._watching -= 1
            watchers = state.users.get(client.user)
            if watchers is not None:
                watchers.discard(client)
                if not watchers:
                    del state.users[client.user]
        client.user = user
        if user is not None:
            self._watching += 1
            state.users.setdefault(user, set()).add(client)
        self.hub.want_scores(self._watching > 0)

    async def snapshot(self, board: str) -> Frame:
        """The board's current `top` frame, for a client that just connected."""
        cached = await self.hub.top(board)
        state = self._boards.get(board)
        if state is not None and state.snapshot is not None and state.snapshot[0] is cached:
            return state.snapshot[1]
        frame = Frame.top(cached)
        if state is not None:
            state.snapshot = (cached, frame)
        return frame

    # Messages from the hub

    def on_message(self, board: str, message: dict[str, Any]) -> None:
        """The hub's listener: called for every Pub/Sub message, and ("", resync)."""
        kind = message.get("type")
        if kind == "resync":
            for name in list(self._boards):
                self._schedule(name, force=True)
            return
        state = self._boards.get(board)
        if state is None:
            return
        if kind == "score":
            # Top changes come on the top channel (kind "top"); this is a watched user's.
            user = message.get("userId")
            watchers = state.users.get(user) if isinstance(user, str) else None
            if watchers:
                frame = Frame.score(message)
                for client in tuple(watchers):
                    client.offer(frame)
        # An erasure may or may not touch the top-10: the re-read tells (and costs one read).
        elif message.get("topChanged") is True or kind in ("erase", "reseed"):
            self._schedule(board)

    def _schedule(self, board: str, *, force: bool = False) -> None:
        state = self._boards.get(board)
        if state is None:
            return
        state.force = state.force or force
        if state.refreshing:
            state.dirty = True
            return
        state.refreshing = True
        task = asyncio.create_task(self._refresh(board, state), name=f"live-refresh-{board}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _current(self, board: str) -> CachedTop:
        """The board's top, read again while it is older than a version already announced."""
        cached = await self.hub.top(board)
        for _ in range(_STALE_READS):
            if cached.version >= self.hub.latest(board):
                break
            cached = await self.hub.top(board)
        return cached

    async def _refresh(self, board: str, state: _BoardState) -> None:
        """Read the board's top once per burst of changes and fan it out if it moved."""
        failures = 0
        try:
            while True:
                state.dirty = False
                try:
                    cached = await self._current(board)
                except ScoreboardError:
                    failures += 1
                    if failures >= _REFRESH_RETRIES:
                        # The hub's resync after its reconnect brings the board back.
                        logger.warning("live: cannot read the top of %s; waiting for Redis", board)
                        return
                    await asyncio.sleep(_REFRESH_RETRY_S)
                    state.dirty = True
                    continue
                failures = 0
                force, state.force = state.force, False
                last = state.last
                if force or last is None or last.data != cached.body(0, TOP_LIMIT):
                    frame = Frame.top(cached, resync=force)
                    state.last = frame
                    await self.fan_out(state, frame)
                if not state.dirty:
                    return
        finally:
            state.refreshing = False

    async def fan_out(self, state: _BoardState, frame: Frame) -> None:
        """Hand one encoded frame to every client of a board.

        Each write costs the kernel about 10 us, so ten thousand clients take a
        tenth of a second: the pass yields between slices to keep requests flowing.
        Changes arriving meanwhile are coalesced into the next pass.
        """
        self.broadcasts += 1
        clients = tuple(state.clients)
        for start in range(0, len(clients), FANOUT_SLICE):
            if start:
                await asyncio.sleep(0)
            for client in clients[start : start + FANOUT_SLICE]:
                try:
                    client.write_now(frame)
                except (RuntimeError, OSError):
                    client.close()

    # Housekeeping

    async def sweep(self) -> None:
        """Close streams whose peer hung up while nothing was sent to them (runs until cancelled)."""
        while True:
            await asyncio.sleep(self.options.sweep_interval_s)
            for state in list(self._boards.values()):
                for client in tuple(state.clients):
                    t = client.transport
                    if t is not None and t.is_closing():
                        client.close()

    def close_all(self) -> None:
        """Graceful shutdown: refuse new clients and end every stream."""
        self.closing = True
        for state in list(self._boards.values()):
            for client in tuple(state.clients):
                client.close()

    async def stop(self) -> None:
        """Cancel background work (refreshes, flushers)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
