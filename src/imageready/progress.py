"""Progress lines for long waits (sysprep, LROs, scans): step, elapsed, what it waits for.

Written straight to the terminal, past pytest's output capture, so an operator watching a
20-minute sysprep sees it move; under xdist, workers write to the same terminal (their stderr).
Every line is redacted.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from imageready.redact import redact
from imageready.text import printable

_lock = threading.Lock()
_sink: Callable[[str], None] | None = None


def set_sink(sink: Callable[[str], None] | None) -> None:
    """Where progress goes (the plugin points it at pytest's terminal writer; None: stderr)."""
    global _sink
    _sink = sink


def emit(message: str) -> None:
    line = f"[imageready {time.strftime('%H:%M:%S')}] {printable(redact(message))}"
    with _lock:
        if _sink is not None:
            _sink(line)
            return
        stream = sys.__stderr__
        if stream is not None:
            stream.write(line + "\n")
            stream.flush()


class Ticker:
    """Report a wait about every ``every`` seconds: ``ticker.tick("ImageState ...")``."""

    def __init__(self, what: str, *, deadline: float, every: float = 10.0) -> None:
        self.what = what
        self.deadline = deadline
        self.every = every
        self.started = time.monotonic()
        self._last = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tick(self, status: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            suffix = f": {status}" if status else ""
            emit(f"{self.what}{suffix} ({self.elapsed:.0f} s / deadline {self.deadline:.0f} s)")
