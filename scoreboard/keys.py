"""Every Redis key and channel name, built in one place.

All keys of one board share the hash tag `{<board>}` so that a Lua script
touching them runs in a single Redis Cluster slot.
"""

from __future__ import annotations

import re

GLOBAL_BOARD = "global"
BOARD_ID_RE = re.compile(r"[a-z0-9_-]{1,64}")
CHANNEL_PREFIX = "scoreboard.updates"
# The service's own channel of top-100 changes (version bumps), erasures and reseeds:
# what keeps every process's top cache and live top-10 current. Every change also goes
# to the contract's channel above; processes subscribe to that one only while one of
# their live clients watches a user's score events.
TOP_CHANNEL_PREFIX = "scoreboard.top"
# The sink's consumer group on every board stream.
SINK_GROUP = "sink"
# A set of every board that ever had a score: lets the sink and reseed find them.
BOARDS_KEY = "sb:boards"


def channel(board: str) -> str:
    """The Pub/Sub channel of a board's changes."""
    return CHANNEL_PREFIX if board == GLOBAL_BOARD else f"{CHANNEL_PREFIX}.{board}"


def top_channel(board: str) -> str:
    """The Pub/Sub channel of a board's top changes."""
    return TOP_CHANNEL_PREFIX if board == GLOBAL_BOARD else f"{TOP_CHANNEL_PREFIX}.{board}"


def patterns(prefix: str) -> tuple[str, str]:
    """The PSUBSCRIBE patterns that cover every board's channel of `prefix`."""
    return prefix, prefix + ".*"


def board_of_channel(name: str, prefix: str = CHANNEL_PREFIX) -> str | None:
    """Inverse of `channel` (or `top_channel`, given its prefix); None for another channel."""
    if name == prefix:
        return GLOBAL_BOARD
    dotted = prefix + "."
    if name.startswith(dotted) and BOARD_ID_RE.fullmatch(name[len(dotted) :]):
        return name[len(dotted) :]
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
