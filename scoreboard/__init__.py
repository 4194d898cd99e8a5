"""Scoreboard: a live leaderboard backend."""

__version__ = "0.1.0"
