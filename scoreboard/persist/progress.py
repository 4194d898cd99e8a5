"""Progress output for long commands: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30


class Progress:
    """Reports `done` of `total` for one labelled task at a time."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._label = ""
        self._total = 0
        self._done = 0
        self._start = 0.0
        self._last_draw = 0.0
        self._last_step = -1

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self._done = label, max(total, 0), 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_step = -1
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self._done += n
        # The last step always shows, so a fast task still ends on a full bar.
        self._draw(force=self._done >= self._total)

    def finish(self, message: str) -> None:
        """End the task with a summary line."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(f"{self._label}: {message}\n")
        self.stream.flush()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        total = max(self._total, self._done)
        fraction = self._done / total if total else 1.0
        if self.tty:
            if not force and now - self._last_draw < 0.1:
                return
            filled = int(BAR_WIDTH * fraction)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(
                f"\r{self._label} [{bar}] {fraction:4.0%} {self._done}/{total}"
                f" {now - self._start:.1f}s"
            )
        else:
            # A line per tenth, and at least every 5 s: readable in a log file.
            step = int(fraction * 10)
            if not force and step == self._last_step and now - self._last_draw < 5:
                return
            self._last_step = step
            self.stream.write(
                f"{self._label}: {self._done}/{total} ({fraction:.0%}) {now - self._start:.1f}s\n"
            )
        self._last_draw = now
        self.stream.flush()


class Quiet(Progress):
    """Progress that says nothing (the embedded startup reseed logs instead)."""

    def start(self, label: str, total: int) -> None:
        self._label = label

    def advance(self, n: int) -> None:
        pass

    def finish(self, message: str) -> None:
        pass
