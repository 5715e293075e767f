"""The request log: every ARM and Entra ID request, for tests that count calls
(``GET /azsim/requests``, ``azsim requests``)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class RequestLog:
    """Every ARM and Entra ID request, for tests that count calls (``GET /azsim/requests``)."""

    def __init__(self, limit: int = 50_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._seq = 0

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._entries.append(entry)

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entries if e["seq"] > since]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
