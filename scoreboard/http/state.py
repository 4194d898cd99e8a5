"""Typed application state keys."""

from __future__ import annotations

from aiohttp import web

from ..auth import Verifier
from ..board import Board
from ..config import Settings
from ..hub import Hub
from ..live import Broadcaster, StreamOptions
from ..metrics import Metrics
from ..persist.base import Store
from ..sink import Sink

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
VERIFIER = web.AppKey("verifier", Verifier)
BOARD = web.AppKey("board", Board)
HUB = web.AppKey("hub", Hub)
STORE = web.AppKey("store", Store)
SINK = web.AppKey("sink", Sink)
BROADCASTER = web.AppKey("broadcaster", Broadcaster)
STREAM_OPTIONS = web.AppKey("stream_options", StreamOptions)
