"""What every durable store shares: the rows the sink writes, and the store interface.

Two backends implement `Store`: PostgreSQL (`persist.postgres`) and SQLite for the
embedded default (`persist.sqlite`). Both apply a batch the same way:

1. erasures first: a tombstone per erased user (keyed by a hash of the user id,
   with the erasure's sequence number), `user_scores` rows older than it deleted,
   `score_events` older than it anonymised;
2. events: inserted once by id, anonymised when a tombstone is newer;
3. `user_scores`: each user's newest event in the batch, written only when its
   sequence number is above both the stored row's `version` and any tombstone.

So batches may arrive in any order, twice, or interleaved between consumers, and
the result is the same.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Event:
    """One applied increment, as logged in the board's stream."""

    id: str
    user_id: str | None
    delta: int
    nonce: str
    source: str
    score: int
    rank: int | None
    seq: int
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Erasure:
    """A user erased from a board at sequence number `seq`."""

    user_id: str
    seq: int
    ts_ms: int


@dataclass(frozen=True, slots=True)
class UserScore:
    """A `user_scores` row to write: the user's newest score in a batch."""

    user_id: str
    score: int
    ts_ms: int
    version: int


@dataclass(frozen=True, slots=True)
class NonceRow:
    """A recent event's nonce with what its 409 body repeats."""

    board: str
    nonce: str
    event_id: str
    score: int
    rank: int | None
    created_ms: int


def user_key(user_id: str) -> bytes:
    """The tombstone key of an erased user: a hash, so the erasure keeps no identity.

    `user_id` is the canonical (lowercase) UUID text, as every layer passes it.
    """
    return hashlib.sha256(user_id.encode()).digest()


@dataclass(slots=True)
class Batch:
    """Stream entries of one board, in stream order, to be written in one transaction."""

    board: str
    events: list[Event] = field(default_factory=list)
    erasures: list[Erasure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.erasures)

    def newest_erasures(self) -> list[Erasure]:
        """One erasure per user (the newest), sorted by user id."""
        newest: dict[str, Erasure] = {}
        for e in self.erasures:
            if e.user_id not in newest or newest[e.user_id].seq < e.seq:
                newest[e.user_id] = e
        return [newest[u] for u in sorted(newest)]

    def event_users(self) -> list[str]:
        """Every user with an event in the batch, sorted."""
        return sorted({e.user_id for e in self.events if e.user_id is not None})

    def resolve(self, tombstones: Mapping[str, int]) -> tuple[list[Event], list[UserScore]]:
        """(events to insert sorted by id, user_scores rows sorted by user).

        `tombstones` maps a user id to the newest erasure's sequence number known
        (stored ones and this batch's own). Sorting keeps the lock order the same in
        every transaction, so concurrent consumers cannot deadlock each other.
        """
        events: list[Event] = []
        newest: dict[str, Event] = {}
        for e in self.events:
            user = e.user_id
            erased_at = tombstones.get(user, -1) if user is not None else -1
            if user is not None and erased_at >= e.seq:
                e = replace(e, user_id=None)
            events.append(e)
            if e.user_id is not None:
                held = newest.get(e.user_id)
                if held is None or held.seq < e.seq:
                    newest[e.user_id] = e
        events.sort(key=lambda e: e.id)
        rows = [
            UserScore(u, e.score, e.ts_ms, e.seq)
            for u, e in sorted(newest.items())
            if e.seq > tombstones.get(u, -1)
        ]
        return events, rows


@dataclass(frozen=True, slots=True)
class Migrated:
    """What `Store.migrate` did."""

    version: int
    applied: tuple[int, ...]


class Snapshot(Protocol):
    """A consistent read view of one board in the store."""

    def scores(self, chunk: int) -> AsyncIterator[list[tuple[str, int, int]]]:
        """Every (user, score, version) of the board, in chunks, in no order."""
        ...

    def ordered(self, chunk: int) -> AsyncIterator[list[tuple[str, int]]]:
        """Every (user, score) in board order: score descending, user id ascending."""
        ...

    async def versions(self, users: Sequence[str]) -> dict[str, int]:
        """The stored version of each of these users that has a row."""
        ...

    async def count(self) -> int:
        """How many users the board has."""
        ...

    async def erased_version(self) -> int:
        """The newest erasure's sequence number on the board (0 for none)."""
        ...


class Store(ABC):
    """A durable store: PostgreSQL or SQLite."""

    kind: str = ""

    @abstractmethod
    async def open(self) -> None:
        """Start connecting (does not wait for the database to answer)."""

    @abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @abstractmethod
    async def migrate(self) -> Migrated:
        """Create or update the schema; idempotent and safe from concurrent processes."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers a trivial query."""

    @abstractmethod
    async def write(self, batch: Batch) -> None:
        """Apply one batch in one transaction (see the module docstring)."""

    @abstractmethod
    async def boards(self) -> list[str]:
        """Every board with a stored score or erasure."""

    @abstractmethod
    def snapshot(self, board: str) -> AbstractAsyncContextManager[Snapshot]:
        """A consistent read view of the board, held until the context exits."""

    @abstractmethod
    def recent_nonces(
        self, boards: Sequence[str], since_ms: int, chunk: int
    ) -> AsyncIterator[list[NonceRow]]:
        """The nonces of events created at or after `since_ms` on these boards."""

    @abstractmethod
    async def scores_of(self, board: str, users: Sequence[str]) -> dict[str, int]:
        """The stored scores of these users (absent users are left out)."""

    @property
    @abstractmethod
    def where(self) -> str:
        """A printable name of the database (no password)."""
