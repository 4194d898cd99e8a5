"""The live store: Lua scripts on Redis for increments, ranks and pages."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import hiredis
import orjson
import redis.asyncio as aioredis
import redis.exceptions as rexc

from . import keys
from .errors import InvalidDelta, RateLimited, Replay, StoreUnavailable

logger = logging.getLogger(__name__)

MAX_SCORE = 2**53 - 1
TOP_SIZE = 100
# A nonce outlives its token's exp + leeway by this much, so clock steps between
# app servers cannot open a replay window.
NONCE_MARGIN_S = 60
RATE_WINDOW_MS = 60_000
REGISTER_EVERY_S = 10.0

RedisClient = Any  # redis.asyncio.Redis or redis.asyncio.RedisCluster
# What a Redis call may raise: the cluster client also raises errors outside RedisError
# (e.g. a slot no node serves while the cluster reconfigures).
REDIS_ERRORS = (rexc.RedisError, rexc.RedisClusterException)


def load_lua(name: str) -> str:
    """The text of `scoreboard/lua/<name>.lua`."""
    return resources.files("scoreboard").joinpath("lua", f"{name}.lua").read_text()


# The per-request value types are NamedTuples: as immutable as a frozen dataclass, and
# built in a quarter of the time (a frozen dataclass sets each field through
# object.__setattr__: 2.5 µs for Increment's nine fields).
class Increment(NamedTuple):
    """What one applied increment did."""

    user_id: str
    score: int
    rank: int
    previous_rank: int | None
    delta: int
    event_id: str
    top_changed: bool
    version: int
    seq: int


@dataclass(frozen=True, slots=True)
class Erased:
    """What erasing a user did: the board's top version after it, and whether the top-10 moved."""

    version: int
    seq: int
    top_changed: bool


class Entry(NamedTuple):
    """One board position."""

    rank: int
    user_id: str
    score: int

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "userId": self.user_id, "score": self.score}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A board's top-100 as stored next to the board, with its version."""

    version: int
    updated_ms: int
    entries: tuple[Entry, ...]


class Script(Protocol):
    """A registered Lua script: redis-py's AsyncScript, or ClusterScript on a cluster."""

    sha: str

    async def __call__(
        self, keys: Sequence[str] | None = None, args: Sequence[Any] | None = None
    ) -> Any: ...


class ClusterScript:
    """A Lua script on a Redis Cluster, loaded only where its keys live.

    redis-py's AsyncScript answers NOSCRIPT with SCRIPT LOAD on *every* primary, which
    fails while any one primary is unreachable: then a fresh process could run no script
    at all, not even for boards on healthy nodes. This loads the script on the node that
    serves the keys (all of one board's keys share a slot) and retries once.
    """

    def __init__(self, cluster: RedisClient, text: str) -> None:
        self._cluster = cluster
        self._text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(
        self, keys: Sequence[str] | None = None, args: Sequence[Any] | None = None
    ) -> Any:
        keys = keys or []
        call = (self.sha, len(keys), *keys, *(args or []))
        try:
            return await self._cluster.evalsha(*call)
        except rexc.NoScriptError:
            node = self._cluster.get_node_from_key(keys[0])
            await self._cluster.execute_command("SCRIPT LOAD", self._text, target_nodes=node)
            return await self._cluster.evalsha(*call)


def _ranked(pairs: list[tuple[str, int]]) -> tuple[Entry, ...]:
    out: list[Entry] = []
    for pos, (user, score) in enumerate(pairs):
        rank = out[-1].rank if out and out[-1].score == score else pos + 1
        out.append(Entry(rank, user, score))
    return tuple(out)


def _triples(flat: list[Any]) -> list[Entry]:
    return [
        Entry(int(flat[i + 2]), flat[i].decode(), int(flat[i + 1])) for i in range(0, len(flat), 3)
    ]


def _translate(e: Exception) -> Exception:
    """Map a script refusal to its typed error, anything else to StoreUnavailable."""
    if isinstance(e, rexc.ResponseError):
        text = str(e)
        code, _, rest = text.partition(" ")
        if code == "SB_REPLAY":
            try:
                original = orjson.loads(rest)
            except orjson.JSONDecodeError:
                original = None
            return Replay("this action's nonce was already used", original)
        if code == "SB_RATE_LIMITED":
            retry = max(1, math.ceil(int(rest) / 1000)) if rest.lstrip("-").isdigit() else 60
            return RateLimited("too many increments for this user this minute", retry)
        if code == "SB_INVALID_DELTA":
            return InvalidDelta(rest or "invalid delta")
    logger.warning("redis failed: %s: %s", type(e).__name__, e)
    return StoreUnavailable("the live store is unavailable")


class _Pipeliner:
    """Sends the script calls made in one event-loop turn to Redis pipelined: in parts of
    SEND_AT as they gather when a kept connection is free, the rest at the end of the turn.

    Each EVALSHA stays atomic on its own; pipelining only saves the client's per-call
    overhead and round trips (about 4x less CPU per call at 16 calls a batch). A call
    whose script is missing on the server (NOSCRIPT after a restart or SCRIPT FLUSH)
    is retried through redis-py's own script object, which loads it.

    On a client made by `connect` the batch goes out on one pooled connection of
    redis-py's, packed by hiredis and read reply by reply under one deadline for the
    whole batch. redis-py's Pipeline costs far more per command than the reply takes
    to parse (a retry wrapper, per-command observability hooks and a timer per read):
    about a quarter of an increment's instructions. Other clients (the embedded one)
    use the Pipeline.
    """

    def __init__(self, client: RedisClient, script: Script) -> None:
        self._client = client
        self._script = script
        pool = getattr(client, "connection_pool", None)
        self._pool = pool if getattr(pool, "connection_class", None) in _PACKING.values() else None
        # Connections this batcher keeps between batches: taking one from the pool and
        # giving it back (a condition, a timer and a socket poll) cost as much again.
        self._idle: list[Any] = []
        self._queue: list[tuple[list[str], list[str | int], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, keys: list[str], args: list[str | int]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        queue = self._queue
        queue.append((keys, args, fut))
        if len(queue) >= SEND_AT and self._send_now():
            return fut
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._queue:
            batch, self._queue = self._queue, []
            self._spawn(self._send(batch))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_now(self) -> bool:
        """Write the queued calls to Redis now, on a kept connection, if one is free.

        Under load one event-loop turn starts dozens of requests, and a batch sent at the
        end of the turn leaves the process idle while Redis runs all of it. Sent in parts
        as the turn goes, Redis works on the first part while the process prepares the
        rest, and the replies come back while it still has work to do.
        """
        if not self._idle:
            return False
        # redis-py's connection keeps its asyncio StreamWriter here; writing to it at once
        # (no drain: a part is a few KB, and its replies are awaited) is what the
        # connection's own send does, without making this call a coroutine.
        writer = getattr(self._idle[-1], "_writer", None)
        if writer is None or writer.is_closing():
            return False  # the end-of-turn batch reconnects it
        conn = self._idle.pop()
        batch, self._queue = self._queue, []
        packed = self._pack(batch)
        writer.write(packed)
        self._spawn(self._send(batch, conn, packed))
        return True

    def _pack(self, batch: list[tuple[list[str], list[str | int], asyncio.Future[Any]]]) -> bytes:
        sha = self._script.sha
        # (hiredis's stub types the command as a one-element tuple)
        return b"".join(
            hiredis.pack_command(cast(Any, ("EVALSHA", sha, len(ks), *ks, *args)))
            for ks, args, _ in batch
        )

    async def _execute(
        self,
        batch: list[tuple[list[str], list[str | int], asyncio.Future[Any]]],
        conn: Any = None,
        packed: bytes | None = None,
    ) -> list[Any]:
        """The batch's replies, in order (a script's error reply as its exception).

        With `conn`, `packed` was already written to that kept connection.
        """
        pool = self._pool
        if pool is None:
            sha = self._script.sha
            pipe = self._client.pipeline(transaction=False)
            for ks, args, _ in batch:
                pipe.evalsha(sha, len(ks), *ks, *args)
            return list(await pipe.execute(raise_on_error=False))
        if packed is None:
            packed = self._pack(batch)
        written = conn is not None
        if conn is None:
            conn = self._idle.pop() if self._idle else await pool.get_connection()
        retry = True
        while True:
            try:
                results = await self._round_trip(conn, packed, len(batch), written)
                break
            except rexc.ConnectionError:
                await pool.release(conn)
                if not retry:
                    raise
                # A connection that Redis closed meanwhile (a restart; the pool's own
                # check can miss it too): once more on a fresh one, as redis-py's retry
                # would. Scripts are safe to repeat: a repeated increment finds its nonce
                # consumed and answers the original.
                retry = written = False
                conn = await pool.get_connection()
            except BaseException:
                await pool.release(conn)
                raise
        if len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            await pool.release(conn)
        return results

    @staticmethod
    async def _round_trip(conn: Any, packed: bytes, replies: int, written: bool) -> list[Any]:
        """Send a packed batch (unless `written`) and read its replies, under one deadline."""
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                if not written:
                    await conn.send_packed_command(packed)
                results = await _read_replies(conn, replies)
        except TimeoutError:
            # Cut off mid-batch: the connection's replies are out of step now.
            await conn.disconnect(nowait=True)
            raise rexc.TimeoutError("Redis did not answer in time") from None
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return results

    async def _send(
        self,
        batch: list[tuple[list[str], list[str | int], asyncio.Future[Any]]],
        conn: Any = None,
        packed: bytes | None = None,
    ) -> None:
        try:
            results = await self._execute(batch, conn, packed)
        except Exception as e:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (ks, args, fut), result in zip(batch, results, strict=True):
            if isinstance(result, rexc.NoScriptError):
                try:
                    result = await self._script(keys=ks, args=args)
                except Exception as e:
                    result = e
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)


try:  # redis-py's marker for "hiredis has no whole reply yet"
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _MORE
except ImportError:  # pragma: no cover - another redis-py layout: the plain reads below
    _MORE = None


async def _read_replies(conn: Any, count: int) -> list[Any]:
    """`count` replies, an error reply as its exception object.

    Straight from the connection's hiredis reader when it has one: redis-py's
    `read_response` costs three coroutines, a host string and a health-check stamp per
    reply, more than hiredis takes to parse it.
    """
    results: list[Any] = []
    parser: Any = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None) if _MORE is not None else None
    if reader is None or not hasattr(parser, "read_from_socket"):
        for _ in range(count):
            try:
                results.append(await conn.read_response(timeout=math.inf))
            except rexc.ResponseError as e:
                results.append(e)
        return results
    while len(results) < count:
        reply = reader.gets()
        if reply is _MORE:
            await parser.read_from_socket()
        elif isinstance(reply, rexc.ConnectionError):
            raise reply
        else:
            results.append(reply)
    return results


class Board:
    """Typed wrappers around the Lua scripts, one instance per Redis client."""

    def __init__(
        self,
        client: RedisClient,
        *,
        leeway_s: int,
        rate_limit_per_min: int,
        subscriber: ClusterSubscriber | None = None,
    ) -> None:
        self.client = client
        self._subscriber = subscriber
        self._leeway_s = leeway_s
        self._rate_limit = rate_limit_per_min
        register = (
            (lambda text: ClusterScript(client, text))
            if isinstance(client, aioredis.RedisCluster)
            else client.register_script
        )
        self._increment: Script = register(load_lua("increment"))
        self._page: Script = register(load_lua("page"))
        self._around: Script = register(load_lua("around"))
        self._user: Script = register(load_lua("user"))
        self._erase: Script = register(load_lua("erase"))
        self._keys: dict[str, keys.BoardKeys] = {}
        # Board -> when it was last added to the board set. Re-added now and then, so a
        # Redis that lost its data lists the board again for the sink within seconds.
        self._registered: dict[str, float] = {}
        # Cluster pipelines route per slot and cannot batch scripts this way.
        cluster = isinstance(client, aioredis.RedisCluster)
        self._calls = {
            script: _Pipeliner(client, script)
            for script in (self._increment, self._page, self._around, self._user)
            if not cluster
        }

    async def _run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        """One script call, batched with the others of this event-loop turn when possible."""
        batch = self._calls.get(script)
        if batch is not None:
            return await batch.call(keys, args)
        return await script(keys=keys, args=args)

    def keys(self, board: str) -> keys.BoardKeys:
        k = self._keys.get(board)
        if k is None:
            k = self._keys[board] = keys.BoardKeys(board)
        return k

    async def increment(
        self,
        board: str,
        user_id: str,
        delta: int,
        nonce: str,
        event_id: str,
        source: str,
        token_exp: int,
    ) -> Increment:
        """Apply one action atomically; raises InvalidDelta, Replay, RateLimited."""
        k = self.keys(board)
        now_ms = int(time.time() * 1000)
        nonce_ttl_ms = max(1000, (token_exp + self._leeway_s + NONCE_MARGIN_S) * 1000 - now_ms)
        window = now_ms // RATE_WINDOW_MS
        window_left_ms = RATE_WINDOW_MS - now_ms % RATE_WINDOW_MS
        try:
            now = time.monotonic()
            if now - self._registered.get(board, -REGISTER_EVERY_S) >= REGISTER_EVERY_S:
                self._registered[board] = now
                await self._register(board)
            script_keys = [
                k.scores,
                k.top,
                k.seq,
                k.nonce(nonce),
                k.rate(user_id, window),
                k.events,
            ]
            script_args: list[str | int] = [
                user_id,
                delta,
                nonce,
                event_id,
                nonce_ttl_ms,
                self._rate_limit,
                window_left_ms + 1000,
                now_ms,
                source,
                keys.channel(board),
                board,
                MAX_SCORE,
                keys.top_channel(board),
            ]
            r = await self._run(self._increment, script_keys, script_args)
        except REDIS_ERRORS as e:
            raise _translate(e) from None
        return Increment(
            user_id=user_id,
            score=int(r[0]),
            rank=int(r[1]),
            previous_rank=int(r[2]) or None,
            delta=delta,
            event_id=event_id,
            top_changed=bool(r[3]),
            version=int(r[4]),
            seq=int(r[5]),
        )

    async def _register(self, board: str) -> None:
        """Add the board to the board set, best effort: on a Redis Cluster the set lives on
        one node, whose outage must not stop the boards of the other nodes. The next try
        comes REGISTER_EVERY_S later."""
        try:
            await self.client.sadd(keys.BOARDS_KEY, board)
        except REDIS_ERRORS as e:
            logger.warning("could not add board %s to the board set: %s", board, e)

    async def snapshot(self, board: str) -> Snapshot:
        """The stored top-100 snapshot (version 0 and no entries for an empty board)."""
        try:
            v, d, t = await self.client.hmget(self.keys(board).top, ["v", "d", "t"])
        except REDIS_ERRORS as e:
            raise _translate(e) from None
        if v is None or d is None:
            return Snapshot(0, int(time.time() * 1000), ())
        pairs = [(u, int(s)) for u, s in orjson.loads(d)]
        return Snapshot(int(v), int(t or 0), _ranked(pairs))

    async def page(self, board: str, offset: int, limit: int) -> tuple[int, list[Entry]]:
        """(version, entries) of positions offset .. offset + limit - 1."""
        k = self.keys(board)
        try:
            flat = await self._run(self._page, [k.scores, k.top], [offset, offset + limit - 1])
        except REDIS_ERRORS as e:
            raise _translate(e) from None
        return int(flat[0]), _triples(flat[1:])

    async def user(self, board: str, user_id: str) -> Entry | None:
        """A user's score and rank, or None."""
        try:
            r = await self._run(self._user, [self.keys(board).scores], [user_id])
        except REDIS_ERRORS as e:
            raise _translate(e) from None
        return Entry(int(r[1]), user_id, int(r[0])) if r else None

    async def around(self, board: str, user_id: str, n: int) -> list[Entry] | None:
        """The user's entry with up to n neighbours on each side, or None."""
        try:
            flat = await self._run(self._around, [self.keys(board).scores], [user_id, n])
        except REDIS_ERRORS as e:
            raise _translate(e) from None
        return _triples(flat) if flat else None

    async def erase(self, board: str, user_id: str) -> Erased | None:
        """Remove a user from the live board and log the erasure for the sink; None if absent."""
        k = self.keys(board)
        try:
            r = await self._erase(
                keys=[k.scores, k.top, k.seq, k.events],
                args=[
                    user_id,
                    int(time.time() * 1000),
                    keys.channel(board),
                    board,
                    keys.top_channel(board),
                ],
            )
        except REDIS_ERRORS as e:
            raise _translate(e) from None
        if not int(r[0]):
            return None
        return Erased(version=int(r[1]), seq=int(r[2]), top_changed=bool(r[3]))

    def pubsub_client(self) -> Any:
        """The client whose `pubsub()` sees every board's channel."""
        return self._subscriber or self.client

    async def aclose(self) -> None:
        """Close the client (and, on a cluster, the subscription clients)."""
        if self._subscriber is not None:
            await self._subscriber.aclose()
        await self.client.aclose()

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except REDIS_ERRORS as e:
            raise _translate(e) from None


_PACKING: dict[type[Any], type[Any]] = {}


def hiredis_packing(cls: type[Any]) -> type[Any]:
    """`cls` with commands packed by hiredis's C packer.

    redis.asyncio packs every command in Python (about 20 µs for an increment's 21
    arguments); hiredis packs the same bytes in a few µs. Without hiredis, `cls` as is.
    """
    if not hasattr(hiredis, "pack_command"):  # pragma: no cover - hiredis < 2.1
        return cls
    packed = _PACKING.get(cls)
    if packed is None:

        def pack_command(self: Any, *args: Any) -> list[bytes]:
            first = args[0]
            # Multi-word command names ("SCRIPT LOAD") go to Redis as separate words.
            if isinstance(first, str) and " " in first:
                args = (*first.split(), *args[1:])
            elif isinstance(first, bytes) and b" " in first:
                args = (*first.split(), *args[1:])
            return [hiredis.pack_command(args)]

        packed = _PACKING[cls] = type(
            f"Hiredis{cls.__name__}", (cls,), {"pack_command": pack_command}
        )
    return packed


COMMAND_TIMEOUT_S = 5
# Connections a script batcher keeps for itself between batches.
MAX_IDLE_CONNECTIONS = 8
# Queued calls that are written to Redis at once instead of at the end of the turn.
# Each early write is a system call and often wakes Redis's idle CPU, which the sender
# pays for: a sweep under wrk -c64 (increments/s against the bare POST, medians of 5
# alternations) gave 0.35 at 4, 0.38-0.40 at 8, 0.40 at 12 and 16, 0.40-0.41 at 24,
# 0.43-0.44 at 32, 0.39-0.42 at 48 and 64, 0.37-0.38 with no early write; at -c160,
# 0.40 at 8 and 0.45 at 32.
SEND_AT = 32
_COMMON: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": COMMAND_TIMEOUT_S,
    "health_check_interval": 30,
}


def connect(url: str, *, cluster: bool = False) -> RedisClient:
    """A Redis client for the URL (no I/O yet)."""
    if cluster:
        return aioredis.RedisCluster.from_url(url, **_COMMON)
    # One retry on a connection error: a pooled connection that Redis closed (a restart)
    # is only found out by using it. Scripts are safe to repeat (see _Pipeliner).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=128, timeout=5, retry_on_error=[rexc.ConnectionError], **_COMMON
    )
    pool.connection_class = hiredis_packing(pool.connection_class)
    return aioredis.Redis.from_pool(pool)


def node_url(url: str, host: str, port: int) -> str:
    """`url` (credentials, TLS options) pointed at another node, db 0."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{address}", path=""))


class ClusterSubscriber:
    """Pub/Sub on a Redis Cluster: a classic PUBLISH reaches every node, so a plain
    subscription on any one node sees every board's channel.

    Each `pubsub()` (the hub asks for one per (re)connection) takes the next node the
    cluster client knows, so a subscription lost with its node comes back on another.
    Before the cluster client has seen the topology, the URL's own node is used.
    """

    def __init__(self, url: str, cluster: RedisClient) -> None:
        self._url = url
        self._cluster = cluster
        self._turn = 0
        self._clients: dict[tuple[str, int], aioredis.Redis] = {}

    def nodes(self) -> list[tuple[str, int]]:
        """The known nodes, primaries and replicas, in a stable order."""
        known = sorted((n.host, int(n.port)) for n in self._cluster.get_nodes())
        if known:
            return known
        parts = urlsplit(self._url)
        return [(parts.hostname or "127.0.0.1", parts.port or 6379)]

    def pubsub(self) -> Any:
        """A PubSub on the next node."""
        nodes = self.nodes()
        node = nodes[self._turn % len(nodes)]
        self._turn += 1
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = aioredis.Redis.from_url(
                node_url(self._url, *node), **_COMMON
            )
        return client.pubsub()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
