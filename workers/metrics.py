"""Counts what this worker process handles, for the ``system`` panel's messages/s."""

from __future__ import annotations

import threading
import time


class HandledCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self._last_total = 0
        self._last_at = time.monotonic()

    def increment(self) -> None:
        with self._lock:
            self.total += 1

    def rate_per_s(self) -> float:
        """Messages per second since the previous call."""
        with self._lock:
            now = time.monotonic()
            rate = (self.total - self._last_total) / max(now - self._last_at, 1e-6)
            self._last_total, self._last_at = self.total, now
        return round(rate, 2)


handled = HandledCounter()
