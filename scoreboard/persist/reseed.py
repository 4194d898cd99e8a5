"""`scoreboard reseed`: rebuild the live boards in Redis from the durable store.

Per board:

1. take the board's reseed lock (`sb:{b}:reseeding`), which also stops the sink
   from trimming the stream: every entry not in the database snapshot below stays
   in the stream until the swap;
2. restore the nonces of recent events (younger than the action-token lifetime
   plus leeway), so replays of them are still refused;
3. copy every user's score from one consistent database snapshot into a
   temporary sorted set;
4. fold in the stream entries the snapshot lacks (an entry whose sequence number
   is above the user's stored version carries the user's newer score);
5. swap the temporary set in with `reseed.lua`, which applies the entries written
   since step 4, moves the board's sequence past every stored version, rebuilds
   the top snapshot and publishes the new version: readers see the old board or
   the new one, never half of either.

Running it twice gives the same board (with a newer version).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import keys
from ..board import NONCE_MARGIN_S, RedisClient, load_lua
from ..config import Settings
from ..sink import known_boards
from .base import NonceRow, Store
from .progress import Progress

logger = logging.getLogger(__name__)

CHUNK = 10_000
STREAM_CHUNK = 10_000
LOCK_MS = 10 * 60_000


class ReseedBusy(Exception):
    """Another reseed of the board holds its lock."""


@dataclass(frozen=True, slots=True)
class Reseeded:
    """What reseeding one board did."""

    board: str
    users: int
    from_stream: int
    nonces: int
    version: int
    seconds: float


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nonce_window_s(settings: Settings) -> int:
    """How far back event nonces are restored: the longest token lifetime plus leeway."""
    return settings.action_token_max_ttl_s + settings.jwt_leeway_s


def nonce_value(row: NonceRow) -> bytes:
    """The nonce key's value exactly as increment.lua stores it."""
    rank = "null" if row.rank is None else str(row.rank)
    return f'{{"eventId":"{row.event_id}","score":{row.score},"rank":{rank}}}'.encode()


class Reseeder:
    """Rebuilds boards from `store` into the Redis behind `client`."""

    def __init__(
        self,
        client: RedisClient,
        store: Store,
        *,
        nonce_window_s: int,
        progress: Progress | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.nonce_window_s = nonce_window_s
        self.progress = progress or Progress()
        self._swap = client.register_script(load_lua("reseed"))

    async def boards(self) -> list[str]:
        """Every board with data in the store or in Redis."""
        stored = set(await self.store.boards())
        return sorted(stored | await known_boards(self.client))

    async def run(self, boards: Sequence[str] | None = None) -> list[Reseeded]:
        """Reseed the given boards (default: every board); returns what each got."""
        chosen = list(boards) if boards else await self.boards()
        return [await self.board(b) for b in chosen]

    async def board(self, board: str) -> Reseeded:
        start = time.monotonic()
        k = keys.BoardKeys(board)
        token = secrets.token_hex(8)
        if not await self.client.set(k.reseeding, token, nx=True, px=LOCK_MS):
            raise ReseedBusy(f"another reseed of board {board!r} is running")
        tmp = k.reseed_scores(token)
        try:
            nonces = await self._nonces(board)
            async with self.store.snapshot(board) as snap:
                total = await snap.count()
                self.progress.start(f"reseed {board}", total)
                newest = await snap.erased_version()
                async for rows in snap.scores(CHUNK):
                    await self.client.zadd(tmp, {u: -s for u, s, _ in rows})
                    newest = max(newest, max(v for _, _, v in rows))
                    self.progress.advance(len(rows))
                    await self.client.pexpire(k.reseeding, LOCK_MS)
                last_id, from_stream, newest_q = await self._fold_stream(k, tmp, snap)
            version, users, tail = await self._swap(
                keys=[tmp, k.scores, k.top, k.seq, k.events, k.reseeding],
                args=[
                    last_id,
                    max(newest, newest_q),
                    int(time.time() * 1000),
                    keys.channel(board),
                    board,
                    token,
                    keys.top_channel(board),
                ],
            )
            await self.client.sadd(keys.BOARDS_KEY, board)
        except BaseException:
            await self.client.delete(tmp)
            if _text(await self.client.get(k.reseeding) or b"") == token:
                await self.client.delete(k.reseeding)
            raise
        done = Reseeded(
            board,
            int(users),
            from_stream + int(tail),
            nonces,
            int(version),
            time.monotonic() - start,
        )
        self.progress.finish(
            f"{done.users} users, {done.from_stream} stream entries applied,"
            f" {done.nonces} nonces, version {done.version}, {done.seconds:.1f}s"
        )
        return done

    async def _nonces(self, board: str) -> int:
        """Restore the nonces of events young enough that their tokens are still valid."""
        k = keys.BoardKeys(board)
        now_ms = int(time.time() * 1000)
        window_ms = (self.nonce_window_s + NONCE_MARGIN_S) * 1000
        restored = 0
        async for rows in self.store.recent_nonces([board], now_ms - window_ms, CHUNK):
            pipe = self.client.pipeline(transaction=False)
            queued = 0
            for row in rows:
                ttl = row.created_ms + window_ms - now_ms
                if ttl > 0:
                    # NX: a nonce still in Redis keeps its own value and lifetime.
                    pipe.set(k.nonce(row.nonce), nonce_value(row), px=ttl, nx=True)
                    queued += 1
            if queued:
                restored += sum(1 for r in await pipe.execute() if r)
        return restored

    async def _fold_stream(self, k: keys.BoardKeys, tmp: str, snap: Any) -> tuple[str, int, int]:
        """Apply stream entries newer than the snapshot; (last id read, applied, newest seq)."""
        last = "0-0"
        newest: dict[str, tuple[int, str, int]] = {}  # user -> (seq, kind, score)
        newest_q = 0
        while True:
            entries = await self.client.xrange(k.events, f"({last}", "+", count=STREAM_CHUNK)
            for entry_id, fields in entries:
                last = _text(entry_id)
                f = {_text(a): _text(b) for a, b in fields.items()}
                try:
                    user, q = f["u"], int(f["q"])
                    kind = f["k"]
                    score = int(f["s"]) if kind == "score" else 0
                except (KeyError, ValueError):
                    continue
                newest_q = max(newest_q, q)
                held = newest.get(user)
                if held is None or held[0] < q:
                    newest[user] = (q, kind, score)
            if len(entries) < STREAM_CHUNK:
                break
        users = list(newest)
        stored: dict[str, int] = {}
        for i in range(0, len(users), CHUNK):
            stored.update(await snap.versions(users[i : i + CHUNK]))
        applied = 0
        pipe = self.client.pipeline(transaction=False)
        for user, (q, kind, score) in newest.items():
            if q <= stored.get(user, -1):
                continue
            if kind == "score":
                pipe.zadd(tmp, {user: -score})
            elif kind == "erase":
                pipe.zrem(tmp, user)
            applied += 1
        if applied:
            await pipe.execute()
        return last, applied, newest_q
