"""Every Redis key and channel name, built in one place.

All keys of one board share the hash tag `{<board>}` so that a Lua script
touching them runs in a single Redis Cluster slot.
"""

from __future__ import annotations

import re

GLOBAL_BOARD = "global"
BOARD_ID_RE = re.compile(r"[a-z0-9_-]{1,64}")
CHANNEL_PREFIX = "scoreboard.updates"
# The sink's consumer group on every board stream.
SINK_GROUP = "sink"
# A set of every board that ever had a score: lets the sink and reseed find them.
BOARDS_KEY = "sb:boards"


def channel(board: str) -> str:
    """The Pub/Sub channel of a board's changes."""
    return CHANNEL_PREFIX if board == GLOBAL_BOARD else f"{CHANNEL_PREFIX}.{board}"


def board_of_channel(name: str) -> str | None:
    """Inverse of `channel`; None for a channel that is not a board's."""
    if name == CHANNEL_PREFIX:
        return GLOBAL_BOARD
    prefix = CHANNEL_PREFIX + "."
    if name.startswith(prefix) and BOARD_ID_RE.fullmatch(name[len(prefix) :]):
        return name[len(prefix) :]
    return None


class BoardKeys:
    """The keys of one board."""

    __slots__ = (
        "board",
        "events",
        "nonce_prefix",
        "rate_prefix",
        "reseeding",
        "scores",
        "seq",
        "tag",
        "top",
    )

    def __init__(self, board: str) -> None:
        self.board = board
        self.tag = f"sb:{{{board}}}"
        self.scores = f"{self.tag}:scores"
        self.top = f"{self.tag}:top"
        self.seq = f"{self.tag}:seq"
        self.events = f"{self.tag}:events"
        self.nonce_prefix = f"{self.tag}:nonce:"
        self.rate_prefix = f"{self.tag}:rate:"
        # Set while `scoreboard reseed` rebuilds the board: the sink does not trim meanwhile.
        self.reseeding = f"{self.tag}:reseeding"

    def nonce(self, nonce: str) -> str:
        return self.nonce_prefix + nonce

    def rate(self, user_id: str, window: int) -> str:
        return f"{self.rate_prefix}{user_id}:{window}"

    def reseed_scores(self, token: str) -> str:
        """The sorted set a reseed builds before swapping it in (same slot as `scores`)."""
        return f"{self.scores}:reseed:{token}"
