"""The sink: drains every board's Redis Stream into the durable store.

One consumer group (`keys.SINK_GROUP`) per board stream; any number of sinks
(`scoreboard worker` processes, and the task inside each `scoreboard serve`)
share the work. Per board, one loop:

- reads a batch (XREADGROUP, up to `batch_size` entries, blocking briefly when idle);
- writes it in one database transaction (idempotent: see `persist.base`), retrying
  with backoff while the database is down, never dropping a batch;
- acknowledges the entries only after the commit;
- takes over entries another consumer left pending longer than `claim_idle_ms`
  (XAUTOCLAIM), and re-reads its own unacknowledged entries after a Redis error;
- trims the stream below the oldest entry not yet committed, never while a
  reseed of the board runs;
- reports lag (entries not yet committed, over every board) in
  `scoreboard_sink_lag_events`, and committed entries in `scoreboard_sink_events_total`.

Every command touches the keys of one board only, so the same code runs against
Redis Cluster (one loop per board, each board on its own shard).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rexc

from . import keys, logs
from .auth import parse_uuid
from .board import RedisClient, load_lua
from .errors import DatabaseUnavailable
from .metrics import Metrics
from .persist.base import Batch, Erasure, Event, Store

logger = logging.getLogger(__name__)

_ZERO = b"0-0"


@dataclass(frozen=True, slots=True)
class SinkOptions:
    """Tuning of the sink; the defaults suit production."""

    batch_size: int = 500
    block_ms: int = 1000
    # A pending entry idle this long belongs to a consumer presumed dead.
    claim_idle_ms: int = 30_000
    boards_every_s: float = 5.0
    housekeeping_every_s: float = 0.5
    retry_max_s: float = 5.0
    consumer: str = ""
    # Loops (consumers) per board in this process: one parses while another writes.
    lanes: int = 2
    # Boards drained besides those listed in `keys.BOARDS_KEY`.
    boards: tuple[str, ...] = (keys.GLOBAL_BOARD,)


def consumer_name() -> str:
    """A consumer name unique to this process run."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field(fields: dict[Any, Any], name: bytes) -> str:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.decode())  # a client decoding responses gives str keys
        if value is None:
            raise KeyError(name.decode())
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entries(board: str, entries: Iterable[tuple[Any, Any]]) -> tuple[Batch, list[Any], int]:
    """(batch, every entry id, malformed entries skipped) of XREADGROUP entries.

    A malformed entry cannot become valid by retrying, so it is logged and
    acknowledged with the rest rather than blocking the stream.
    """
    batch = Batch(board)
    ids: list[Any] = []
    bad = 0
    for entry_id, f in entries:
        ids.append(entry_id)
        if not f:
            continue  # deleted from the stream while pending
        try:
            kind = _field(f, b"k")
            if kind == "score":
                event_id, user = _field(f, b"e"), _field(f, b"u")
                if parse_uuid(event_id) != event_id or parse_uuid(user) != user:
                    raise ValueError("event or user id is not a canonical UUID")
                rank = f.get(b"r", f.get("r"))
                batch.events.append(
                    Event(
                        id=event_id,
                        user_id=user,
                        delta=int(_field(f, b"d")),
                        nonce=_field(f, b"n"),
                        source=_field(f, b"src"),
                        score=int(_field(f, b"s")),
                        rank=int(rank) if rank is not None else None,
                        seq=int(_field(f, b"q")),
                        ts_ms=int(_field(f, b"ts")),
                    )
                )
            elif kind == "erase":
                user = _field(f, b"u")
                if parse_uuid(user) != user:
                    raise ValueError("user id is not a canonical UUID")
                batch.erasures.append(Erasure(user, int(_field(f, b"q")), int(_field(f, b"ts"))))
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (KeyError, ValueError) as e:
            bad += 1
            logger.error("skipping malformed stream entry %s on board %s: %s", entry_id, board, e)
    return batch, ids, bad


async def board_lag(client: RedisClient, board: str) -> int:
    """Entries of a board's stream not yet committed: undelivered plus pending."""
    k = keys.BoardKeys(board)
    try:
        groups = await client.xinfo_groups(k.events)
    except rexc.ResponseError:
        return 0  # no stream: nothing to commit
    for g in groups:
        if _text(g["name"]) == keys.SINK_GROUP:
            lag = g.get("lag")
            if lag is None:
                # Unknown after some deletions: the whole stream is an upper bound.
                return int(await client.xlen(k.events))
            return int(lag) + int(g["pending"])
    return int(await client.xlen(k.events))


async def known_boards(client: RedisClient, extra: Iterable[str] = ()) -> set[str]:
    """Every board listed in Redis, plus `extra`."""
    members = await client.smembers(keys.BOARDS_KEY)
    boards = {_text(m) for m in members} | set(extra)
    return {b for b in boards if keys.BOARD_ID_RE.fullmatch(b)}


class _Stopped(Exception):
    pass


def _raise_if_cancelled() -> None:
    """End the current task if it was cancelled, even when the cancellation was lost.

    A cancellation that lands inside a blocking redis-py read can come out as a
    ConnectionError (or not at all); a loop that retries on Redis errors would then run
    on and whoever awaits it (shutdown) would wait forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Sink:
    """Drains every board's stream into `store` until `stop()` or cancellation."""

    def __init__(
        self,
        client: RedisClient,
        store: Store,
        metrics: Metrics,
        options: SinkOptions | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.metrics = metrics
        self.options = options or SinkOptions()
        self.consumer = self.options.consumer or consumer_name()
        self.committed = 0
        self.redelivered = 0
        self._lags: dict[str, int] = {}
        self._loops: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._trim = client.register_script(load_lua("trim"))
        self._db_down_since: float | None = None
        self._db_warned_at = 0.0

    @property
    def lag(self) -> int:
        """Entries not yet committed, over every board, as last measured."""
        return sum(self._lags.values())

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Finish the batches in hand, then return from `run()`."""
        self._stopping.set()

    async def run(self) -> None:
        """Find boards, run one loop per board; returns after `stop()`."""
        logger.info(
            "sink started",
            extra={"fields": {"consumer": self.consumer, "store": self.store.where}},
        )
        try:
            while not self.stopping:
                _raise_if_cancelled()
                try:
                    boards = await known_boards(self.client, self.options.boards)
                except (rexc.RedisError, OSError):
                    boards = set(self.options.boards)
                for board in sorted(boards):
                    for lane in range(max(1, self.options.lanes)):
                        if (board, lane) not in self._loops:
                            self._loops[board, lane] = asyncio.create_task(
                                self._board_loop(board, lane), name=f"scoreboard-sink-{board}"
                            )
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.options.boards_every_s)
            await asyncio.gather(*self._loops.values(), return_exceptions=True)
        finally:
            for task in self._loops.values():
                task.cancel()
            for task in self._loops.values():
                with suppress(asyncio.CancelledError):
                    await task
            self._loops.clear()
            logs.event(
                logger,
                "sink stopped",
                {
                    "consumer": self.consumer,
                    "committed": self.committed,
                    "redelivered": self.redelivered,
                },
            )

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every known board's stream is committed (True) or the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                boards = await known_boards(self.client, self.options.boards)
                lags = [await board_lag(self.client, b) for b in sorted(boards)]
            except (rexc.RedisError, OSError):
                lags = [1]
            if sum(lags) == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    # -- one board -----------------------------------------------------------------

    async def _board_loop(self, board: str, lane: int) -> None:
        loop = _BoardLoop(self, board, f"{self.consumer}-{lane}")
        backoff = 0.1
        while not self.stopping:
            _raise_if_cancelled()
            try:
                await loop.step()
                backoff = 0.1
            except _Stopped:
                return
            except rexc.ResponseError as e:
                if str(e).startswith(("NOGROUP", "UNBLOCKED")):
                    # The stream or group was lost (Redis restarted empty, FLUSHALL).
                    loop.group_ready = False
                    continue
                logger.warning("sink on board %s: redis refused: %s", board, e)
                await self._pause(backoff)
                backoff = min(backoff * 2, self.options.retry_max_s)
            except (rexc.RedisError, OSError) as e:
                logger.warning("sink on board %s: redis failed (%s); retrying", board, e)
                loop.recover_own = True
                await self._pause(backoff)
                backoff = min(backoff * 2, self.options.retry_max_s)
            except Exception:
                logger.exception("sink on board %s failed; retrying", board)
                loop.recover_own = True
                await self._pause(self.options.retry_max_s)

    async def _pause(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def commit(self, batch: Batch, ids: list[Any], heartbeat: _BoardLoop) -> None:
        """Write the batch (retrying while the database is down), then acknowledge it."""
        backoff = 0.1
        while True:
            _raise_if_cancelled()
            try:
                if not self._schema_ready:
                    async with self._schema_lock:
                        if not self._schema_ready:
                            await self.store.migrate()
                            self._schema_ready = True
                if len(batch):
                    await self.store.write(batch)
                break
            except DatabaseUnavailable as e:
                self._schema_ready = False
                self._note_db_down(batch.board, e, len(ids))
                if self.stopping:
                    # Left pending: another consumer takes the entries over.
                    raise _Stopped from None
                await self._pause(backoff)
                backoff = min(backoff * 2, self.options.retry_max_s)
                await heartbeat.keep_claimed(ids)
                with suppress(rexc.RedisError, OSError):
                    self.set_lag(batch.board, await board_lag(self.client, batch.board))
        self._note_db_up()
        if ids:
            await self.client.xack(heartbeat.k.events, keys.SINK_GROUP, *ids)
        self.committed += len(ids)
        self.metrics.sink_events.inc(len(ids))

    def _note_db_down(self, board: str, e: DatabaseUnavailable, held: int) -> None:
        now = time.monotonic()
        if self._db_down_since is None:
            self._db_down_since = now
        if now - self._db_warned_at >= 30:
            self._db_warned_at = now
            logs.event(
                logger,
                "database unavailable; holding the batch and retrying",
                {"board": board, "error": e.message, "held": held, "lag": self.lag},
                logging.WARNING,
            )

    def _note_db_up(self) -> None:
        if self._db_down_since is not None:
            down = time.monotonic() - self._db_down_since
            self._db_down_since = None
            self._db_warned_at = 0.0
            logs.event(logger, "database back", {"downSeconds": round(down, 1), "lag": self.lag})

    def set_lag(self, board: str, lag: int) -> None:
        self._lags[board] = lag
        self.metrics.sink_lag.set(self.lag)


class _BoardLoop:
    """The state of one board's loop inside a sink."""

    def __init__(self, sink: Sink, board: str, consumer: str) -> None:
        self.sink = sink
        self.board = board
        self.consumer = consumer
        self.k = keys.BoardKeys(board)
        self.group_ready = False
        # Our own unacknowledged entries (after a Redis error) are read again first.
        self.recover_own = True
        self._next_claim = 0.0
        self._next_housekeeping = 0.0

    async def step(self) -> None:
        sink, o = self.sink, self.sink.options
        client = sink.client
        if not self.group_ready:
            await self._ensure_group()
        if self.recover_own:
            got = await client.xreadgroup(
                keys.SINK_GROUP, self.consumer, {self.k.events: "0"}, count=o.batch_size
            )
            entries = got[0][1] if got else []
            if entries:
                await self._handle(entries, redelivered=True)
                return
            self.recover_own = False
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(o.claim_idle_ms / 2000, 0.05)
            if await self._claim():
                return
        got = await client.xreadgroup(
            keys.SINK_GROUP,
            self.consumer,
            {self.k.events: ">"},
            count=o.batch_size,
            block=o.block_ms,
        )
        entries = got[0][1] if got else []
        if entries:
            await self._handle(entries, redelivered=False)
        if not entries or time.monotonic() >= self._next_housekeeping:
            self._next_housekeeping = time.monotonic() + o.housekeeping_every_s
            await self._housekeeping()

    async def _ensure_group(self) -> None:
        try:
            # From the stream's start: entries written before any sink ran are kept too.
            await self.sink.client.xgroup_create(self.k.events, keys.SINK_GROUP, "0", mkstream=True)
        except rexc.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self.group_ready = True

    async def _handle(self, entries: list[Any], *, redelivered: bool) -> None:
        batch, ids, _bad = parse_entries(self.board, entries)
        if redelivered:
            self.sink.redelivered += len(ids)
        await self.sink.commit(batch, ids, self)

    async def _claim(self) -> int:
        """Take over entries pending longer than the claim idle time; returns how many."""
        sink, o = self.sink, self.sink.options
        start: Any = _ZERO
        total = 0
        for _ in range(100):
            reply = await sink.client.xautoclaim(
                self.k.events,
                keys.SINK_GROUP,
                self.consumer,
                o.claim_idle_ms,
                start_id=start,
                count=o.batch_size,
            )
            start, entries = reply[0], reply[1]
            if entries:
                total += len(entries)
                logs.event(
                    logger,
                    "claimed stale entries",
                    {"board": self.board, "entries": len(entries), "consumer": self.consumer},
                )
                await self._handle(entries, redelivered=True)
            if start in (_ZERO, "0-0"):
                break
        if total == 0:
            await self._forget_dead_consumers()
        return total

    async def _forget_dead_consumers(self) -> None:
        """Remove consumers that hold nothing and were idle for long from the group."""
        sink = self.sink
        idle_limit = max(10 * sink.options.claim_idle_ms, 600_000)
        consumers = await sink.client.xinfo_consumers(self.k.events, keys.SINK_GROUP)
        for c in consumers:
            name = _text(c["name"])
            mine = name.startswith(sink.consumer + "-")
            if not mine and int(c["pending"]) == 0 and int(c["idle"]) > idle_limit:
                await sink.client.xgroup_delconsumer(self.k.events, keys.SINK_GROUP, name)

    async def keep_claimed(self, ids: list[Any]) -> None:
        """Reset the idle time of entries in hand, so others do not take them over."""
        if ids:
            with suppress(rexc.RedisError, OSError):
                await self.sink.client.xclaim(
                    self.k.events, keys.SINK_GROUP, self.consumer, 0, ids, justid=True
                )

    async def _housekeeping(self) -> None:
        """Trim what every consumer has committed, and measure lag."""
        client = self.sink.client
        # last-delivered-id is read before the pending summary: an entry delivered in
        # between is then above the trim point, never below it.
        try:
            groups = await client.xinfo_groups(self.k.events)
        except rexc.ResponseError:
            groups = []  # the stream is gone (Redis lost its data)
        group = next((g for g in groups if _text(g["name"]) == keys.SINK_GROUP), None)
        if group is None:
            self.group_ready = False
            return
        pending = await client.xpending(self.k.events, keys.SINK_GROUP)
        keep = pending["min"] if pending["pending"] else group["last-delivered-id"]
        if keep not in (_ZERO, "0-0", None):
            await self.sink._trim(keys=[self.k.events, self.k.reseeding], args=[keep])
        lag = group.get("lag")
        if lag is None:
            lag = await client.xlen(self.k.events)
        self.sink.set_lag(self.board, int(lag) + int(pending["pending"]))


async def redis_durability_warnings(client: RedisClient) -> list[str]:
    """What in the connected Redis's configuration puts nonces or events at risk."""
    warnings: list[str] = []
    try:
        policy = _text((await client.config_get("maxmemory-policy")).get("maxmemory-policy", ""))
        aof = _text((await client.config_get("appendonly")).get("appendonly", ""))
    except (rexc.RedisError, OSError, AttributeError):
        return warnings  # CONFIG may be renamed or refused (managed Redis): nothing to say
    if policy and policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis may evict "
            "nonce keys (a replayed action would then be accepted) or board data; "
            "set maxmemory-policy noeviction"
        )
    if aof == "no":
        warnings.append(
            "Redis runs without AOF (appendonly no): a Redis restart loses every increment "
            "since the last snapshot, including ones the sink has not committed yet; "
            "set appendonly yes (appendfsync everysec, or always for zero loss)"
        )
    return warnings
