"""Progress of a batch job: one live line at a terminal, plain lines every few seconds in logs.

    [batch] 1200/5000 rows, 41.3 rows/s, ETA 1m32s          (rewritten in place at a terminal)
    [batch] 1200/5000 rows, 41.3 rows/s, ETA 1m32s           (every `every_s` seconds otherwise: `ray job logs`)

Rows already written by an earlier run count as done; the rate is this run's. Without a known total
(conversations: a record holds any number of questions) the line shows rows and rate.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "duration"]

LIVE_EVERY_S = 0.5  # redraws of the terminal line


def duration(seconds: float) -> str:
    """75 -> '1m15s'"""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    def __init__(self, total: int | None, done_before: int, every_s: float, stream: TextIO | None = None,
                 started: float | None = None):  # fmt: skip
        self.total = total
        self.done_before = done_before
        self.done = 0  # rows written by this run
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.started = time.monotonic() if started is None else started  # time.monotonic() when the job started
        self.first_row_s: float | None = None  # seconds from the start to the first row written: the job's start-up
        self.shown = 0.0
        self.shown_done = -1  # rows the last line showed

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        finished = self.done_before + self.done
        parts = [f"{finished}/{self.total} rows" if self.total is not None else f"{finished} rows", f"{rate:.1f} rows/s"]
        if self.total is not None and rate > 0:
            parts.append(f"ETA {duration(max(0, self.total - finished) / rate)}")
        return "[batch] " + ", ".join(parts)

    def add(self, rows: int) -> None:
        if rows and self.first_row_s is None:
            self.first_row_s = time.monotonic() - self.started
        self.done += rows
        now = time.monotonic()
        if now - self.shown >= (LIVE_EVERY_S if self.live else self.every_s):
            self.shown = now
            self._show()

    def _show(self) -> None:
        self.shown_done = self.done
        if self.live:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown_done != self.done:
            self._show()
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
