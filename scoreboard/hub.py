"""One Pub/Sub subscription per process: keeps the top cache fresh and feeds live clients."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.exceptions as rexc
from multidict import CIMultiDict

from . import keys
from .board import TOP_SIZE, Board, Snapshot
from .metrics import Metrics

logger = logging.getLogger(__name__)

# While the subscription is down a cached snapshot is trusted this long at most.
UNSUBSCRIBED_MAX_AGE_S = 1.0
# How often the listener wakes to check for shutdown.
POLL_INTERVAL_S = 0.2
# What every JSON response of the service says it is.
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# How long a new watcher of a user's scores waits for the score feed to be confirmed.
SCORES_READY_TIMEOUT_S = 2.0
TOP_PATTERNS = keys.patterns(keys.TOP_CHANNEL_PREFIX)
SCORE_PATTERNS = keys.patterns(keys.CHANNEL_PREFIX)
Listener = Callable[[str, dict[str, Any]], None]


def iso_ms(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass(slots=True)
class CachedTop:
    """A board's top-100 snapshot with its encoded pages, built once per version."""

    snapshot: Snapshot
    fetched_at: float
    bodies: dict[tuple[int, int], bytes] = field(default_factory=dict)
    # A page's response headers, and a 304's, built once per version.
    etag: str = ""
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    not_modified_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)

    def __post_init__(self) -> None:
        self.etag = f'"{self.snapshot.version}"'
        self.not_modified_headers = CIMultiDict({"ETag": self.etag, "Cache-Control": "no-cache"})
        self.headers = self.not_modified_headers.copy()
        self.headers["Content-Type"] = JSON_CONTENT_TYPE

    @property
    def version(self) -> int:
        return self.snapshot.version

    def updated_at(self) -> str:
        return iso_ms(self.snapshot.updated_ms)

    def body(self, offset: int, limit: int) -> bytes:
        """The `/scores/top` JSON for this page (offset + limit within the top-100)."""
        key = (offset, limit)
        body = self.bodies.get(key)
        if body is None:
            entries = self.snapshot.entries[offset : offset + limit]
            body = self.bodies[key] = orjson.dumps(
                {
                    "entries": [e.as_dict() for e in entries],
                    "version": self.snapshot.version,
                    "updatedAt": self.updated_at(),
                }
            )
        return body


class Hub:
    """Subscribes to every board's top channel; caches tops; tells listeners of changes.

    Every board's top changes (and erasures and reseeds) come on the service's own top
    channel, a message per top-100 change. Each score change also comes on the contract's
    channel; this process subscribes to that feed only while a live client watches a
    user's score events (`want_scores`). Reading every change's message cost about an
    eighth of the increment path's CPU in a process that did not need it.
    """

    def __init__(self, board: Board, metrics: Metrics) -> None:
        self._board = board
        self._metrics = metrics
        self._cache: dict[str, CachedTop] = {}
        self._latest: dict[str, int] = {}
        self._listeners: list[Listener] = []
        self._fetching: dict[str, asyncio.Future[CachedTop]] = {}
        self.subscribed = False
        self.ready = asyncio.Event()
        self._stopping = False
        self._pubsub: Any = None
        # Whether score events are wanted; whether the current subscription asked for
        # them; and set while the server has confirmed that it sends them.
        self._scores_wanted = False
        self._scores_asked = False
        self._scores_on = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def note_version(self, board: str, version: int) -> None:
        """A newer version of a board's top exists (seen in a reply or a message)."""
        if version > self._latest.get(board, -1):
            self._latest[board] = version

    def latest(self, board: str) -> int:
        """The newest version of a board's top seen so far (-1: none since (re)subscribing)."""
        return self._latest.get(board, -1)

    def _fresh(self, board: str) -> CachedTop | None:
        cached = self._cache.get(board)
        if cached is None or cached.version < self._latest.get(board, 0):
            return None
        if not self.subscribed and time.monotonic() - cached.fetched_at > UNSUBSCRIBED_MAX_AGE_S:
            return None
        return cached

    def cached(self, board: str) -> CachedTop | None:
        """The board's top from memory when it is current (a hit), else None: the hot
        read's path with no coroutine; `top` reads Redis for the rest."""
        cached = self._fresh(board)
        if cached is not None:
            self._metrics.cache_hit.inc()
        return cached

    async def top(self, board: str) -> CachedTop:
        """The newest known top of a board: from memory when current, else from Redis."""
        cached = self.cached(board)
        if cached is not None:
            return cached
        self._metrics.cache_miss.inc()
        # Concurrent misses of one board share one Redis read.
        pending = self._fetching.get(board)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[CachedTop] = asyncio.get_running_loop().create_future()
        self._fetching[board] = fut
        try:
            snapshot = await self._board.snapshot(board)
            cached = CachedTop(snapshot, time.monotonic())
            self.note_version(board, snapshot.version)
            current = self._cache.get(board)
            if current is None or current.version <= snapshot.version:
                self._cache[board] = cached
            fut.set_result(cached)
            return cached
        except BaseException as e:
            fut.set_exception(e)
            # The exception is delivered to waiters, if any; none is not an error.
            fut.exception()
            raise
        finally:
            del self._fetching[board]

    def want_scores(self, wanted: bool) -> None:
        """Receive every score change (True) while a live client watches a user's scores."""
        if wanted == self._scores_wanted:
            return
        self._scores_wanted = wanted
        task = asyncio.create_task(self._ask_scores(), name="scoreboard-hub-scores")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def scores_ready(self) -> bool:
        """Wait until score changes are delivered (bounded: False while Redis is away)."""
        if not self._scores_wanted:
            return False
        try:
            await asyncio.wait_for(self._scores_on.wait(), SCORES_READY_TIMEOUT_S)
        except TimeoutError:
            return False
        return True

    async def _ask_scores(self) -> None:
        """Bring the subscription in line with `want_scores` (run also calls this)."""
        pubsub = self._pubsub
        wanted = self._scores_wanted
        if pubsub is None or wanted == self._scores_asked:
            return
        self._scores_asked = wanted
        try:
            if wanted:
                await pubsub.psubscribe(*SCORE_PATTERNS)
            else:
                await pubsub.punsubscribe(*SCORE_PATTERNS)
        except (rexc.RedisError, OSError) as e:
            # The listener sees the broken connection too, reconnects and asks again.
            logger.debug("could not change the score subscription: %s", e)

    def _dispatch(self, channel: str, data: bytes) -> None:
        top_board = keys.board_of_channel(channel, keys.TOP_CHANNEL_PREFIX)
        scores = top_board is None
        board = keys.board_of_channel(channel) if top_board is None else top_board
        if board is None:
            return
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("ignoring a malformed message on %s", channel)
            return
        if not isinstance(message, dict):
            return
        # The contract's channel carries erasures and reseeds too; the top channel
        # already brought those.
        if scores and message.get("type") != "score":
            return
        version = message.get("version")
        if isinstance(version, int):
            self.note_version(board, version)
        for listener in self._listeners:
            try:
                listener(board, message)
            except Exception:
                logger.exception("a live listener failed")

    def _reset(self) -> None:
        """Forget every cached top: messages may have been missed while unsubscribed."""
        self._pubsub = None
        self._scores_asked = False
        self._scores_on.clear()
        self._cache.clear()
        # Versions seen before may belong to data Redis has lost since (a restart without
        # persistence): remembering them would make every later read a miss.
        self._latest.clear()

    def stop(self) -> None:
        """Ask `run` to return within one poll interval.

        The loop is stopped by a flag, not by cancellation: cancelling a task blocked in
        a pub/sub read with a timeout can be swallowed by the client library, which would
        hang shutdown.
        """
        self._stopping = True

    async def run(self) -> None:
        """Listen until `stop()`, reconnecting with backoff after Redis failures."""
        backoff = 0.1
        scores_pattern = SCORE_PATTERNS[-1].encode()
        while not self._stopping:
            pubsub = self._board.pubsub_client().pubsub()
            try:
                await pubsub.psubscribe(*TOP_PATTERNS)
                while not self._stopping:
                    if self._scores_wanted != self._scores_asked and self.subscribed:
                        await self._ask_scores()
                    msg = await pubsub.get_message(
                        ignore_subscribe_messages=False, timeout=POLL_INTERVAL_S
                    )
                    if msg is None:
                        continue
                    kind = msg["type"]
                    if kind == "pmessage":
                        channel = msg["channel"]
                        self._dispatch(
                            channel.decode() if isinstance(channel, bytes) else channel,
                            msg["data"],
                        )
                    elif kind == "psubscribe" and not self.subscribed:
                        self._reset()
                        self._pubsub = pubsub
                        self.subscribed = True
                        self.ready.set()
                        backoff = 0.1
                        await self._ask_scores()
                        for listener in self._listeners:
                            listener("", {"type": "resync"})
                    elif kind in ("psubscribe", "punsubscribe") and msg["channel"] in (
                        scores_pattern,
                        scores_pattern.decode(),
                    ):
                        if kind == "psubscribe":
                            self._scores_on.set()
                        else:
                            self._scores_on.clear()
            except (rexc.RedisError, OSError) as e:
                if self.subscribed:
                    logger.warning("live subscription lost (%s); reconnecting", e)
                self.subscribed = False
                self._reset()
                if not self._stopping:
                    await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                except (rexc.RedisError, OSError):
                    pass


def top_in_cache_range(offset: int, limit: int) -> bool:
    return offset + limit <= TOP_SIZE
