"""Counting finished jobs per kind, for /metrics."""

import threading
from collections import Counter


class JobCounter:
    """A thread-safe counter of finished jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def done(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
