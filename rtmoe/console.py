"""A live status line that suits where the output goes.

On a terminal the line is rewritten in place (``\\r`` … erase to end of line) at every
update; in a file or a pipe each update is one plain line, at most one per ``period_s``,
so logs read as a time series instead of filling with control characters.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StatusLine:
    """One refreshing console line.

    Parameters
    ----------
    stream : text stream, default ``sys.stderr``
    period_s : float
        Least time between two plain lines when ``stream`` is not a terminal.
    """

    def __init__(self, stream: TextIO | None = None, period_s: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.period_s = period_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_s = -float("inf")
        self._shown = False

    def update(self, text: str) -> None:
        if self.tty:
            print(f"\r{text}\033[K", end="", file=self.stream, flush=True)
            self._shown = True
            return
        now = time.monotonic()
        if now - self._last_s >= self.period_s:
            print(text, file=self.stream, flush=True)
            self._last_s = now

    def close(self) -> None:
        """End the line on a terminal (plain output already ends every line)."""
        if self.tty and self._shown:
            print(file=self.stream, flush=True)
        self._shown = False
