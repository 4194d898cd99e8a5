"""Logging setup: one JSON object per line, or readable text on a terminal."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

# Loggers whose records carry structured fields in `record.fields`.
INCREMENTS = logging.getLogger("scoreboard.increments")
SECURITY = logging.getLogger("scoreboard.security")


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_tags)
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`HH:MM:SS level logger: msg key=value ...` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{ts} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        fields = {**_tags, **(getattr(record, "fields", None) or {})}
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# (stream, json?) once `setup` ran: structured events are written there directly.
_direct: tuple[Any, bool] | None = None
# Fields on every line of this process (an HTTP worker's index and pid), set by `tag`.
_tags: dict[str, Any] = {}


def tag(**fields: Any) -> None:
    """Add fields to every log line this process writes from now on."""
    _tags.update(fields)


def setup(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure the root logger once for the process."""
    global _direct
    flush()
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    _direct = (stream, fmt == "json")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats what the increment log already says.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def event(
    logger: logging.Logger, msg: str, fields: dict[str, Any], level: int = logging.INFO
) -> None:
    """Log one structured line: the same line the handlers would write, for a few µs.

    The per-increment log line is on the hot path; building a LogRecord and running it
    through the handler chain costs several times more than formatting the line. Once
    `setup` configured the process, the line goes straight to its stream, at the end of
    the event-loop turn together with the turn's other lines; before that (libraries,
    tests) it goes through `logging` as usual.
    """
    if not logger.isEnabledFor(level):
        return
    direct = _direct
    if direct is None:
        logger.log(level, msg, extra={"fields": fields})
        return
    stream, as_json = direct
    name = _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
    if as_json:
        out = {"ts": _utc_ms(time.time()), "level": name, "logger": logger.name, "msg": msg}
        if _tags:
            out.update(_tags)
        out.update(fields)
        line = orjson.dumps(out, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
    else:
        now = datetime.now()
        extra = " ".join(f"{k}={v}" for k, v in {**_tags, **fields}.items() if v is not None)
        line = f"{now:%H:%M:%S} {name:7} {logger.name}: {msg} {extra}\n"
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    _pending.append(line)
    if loop is None:
        flush()
    elif _flush_on[0] is not loop:
        # (A flush scheduled on a loop that closed before running it is replaced.)
        _flush_on[0] = loop
        loop.call_soon(flush)


# The structured lines of the current event-loop turn: written together by one write
# call when the turn ends (a server under load logs dozens of increments a turn, and a
# write system call per line cost more than making the line).
_pending: list[str] = []
# The loop a flush of `_pending` is scheduled on.
_flush_on: list[asyncio.AbstractEventLoop | None] = [None]


@atexit.register
def flush() -> None:
    """Write the lines still waiting for the end of their event-loop turn."""
    _flush_on[0] = None
    if not _pending:
        return
    text = "".join(_pending)
    _pending.clear()
    if _direct is not None:
        _direct[0].write(text)


_LEVEL_NAMES = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}
# The ISO-8601 text of the current second, reused by every line within it.
_second: list[Any] = [-1, ""]


def _utc_ms(t: float) -> str:
    """`t` as `YYYY-MM-DDTHH:MM:SS.mmm+00:00`, what isoformat(timespec="milliseconds") gives."""
    sec = int(t)
    if sec != _second[0]:
        _second[0] = sec
        _second[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{int((t - sec) * 1000):03d}+00:00"
