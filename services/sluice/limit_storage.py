"""An in-process storage for ``limits`` made for asyncio workers: no timer threads.

limits' own ``memory://`` storage expires entries from a ``threading.Timer`` it starts
again every 10 ms while requests come in, and puts each moving-window hit at the front
of a list. On a busy worker that is a hundred threads started a second, each taking the
GIL from the event loop, and a copy per request that grows with the limit. Here a key's
moving window is a deque expired from its old end whenever the key is used, a fixed
window is a count and its end, and a sweep every ``SWEEP_SECONDS`` (run by whichever
call comes first after it is due) drops keys nobody used since they expired.

Registered with ``limits`` as ``sluice-memory://``: what :class:`sluice.rates.RateLimits`
uses when there is no Redis.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from limits.storage import MovingWindowSupport, Storage

SWEEP_SECONDS = 10.0
SCHEME = "sluice-memory"


class LoopMemoryStorage(Storage, MovingWindowSupport):
    STORAGE_SCHEME: list[str] | None = [SCHEME]  # noqa: RUF012 (limits' own type)

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: object):
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self._counts: dict[str, list[float]] = {}  # key -> [count, expires at]
        self._windows: dict[str, deque[float]] = {}  # key -> hit times, oldest first
        self._expiry: dict[str, float] = {}  # window key -> its expiry (for the sweep)
        # Routes are async, so calls come from the event loop; a sync route would call from
        # a thread pool, and an uncontended lock costs next to nothing.
        self._lock = threading.Lock()
        self._next_sweep = time.time() + SWEEP_SECONDS

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    # Fixed windows

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            self._maybe_sweep(now)
            entry = self._counts.get(key)
            if entry is None or entry[1] <= now:
                entry = self._counts[key] = [0, now + expiry]
            entry[0] += amount
            return int(entry[0])

    def decr(self, key: str, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            entry = self._counts.get(key)
            if entry is None or entry[1] <= now:
                return 0
            entry[0] = max(entry[0] - amount, 0)
            return int(entry[0])

    def get(self, key: str) -> int:
        entry = self._counts.get(key)
        if entry is None or entry[1] <= time.time():
            return 0
        return int(entry[0])

    def get_expiry(self, key: str) -> float:
        now = time.time()
        entry = self._counts.get(key)
        return entry[1] if entry is not None and entry[1] > now else now

    # Moving windows

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        with self._lock:
            self._maybe_sweep(now)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque()
            _expire(window, now - expiry)
            if len(window) + amount > limit:
                return False
            window.extend([now] * amount)
            self._expiry[key] = expiry
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The oldest hit still in the window and how many there are."""
        now = time.time()
        with self._lock:
            window = self._windows.get(key)
            if not window:
                return now, 0
            _expire(window, now - expiry)
            return (window[0], len(window)) if window else (now, 0)

    # Housekeeping

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self._counts) + len(self._windows)
            self._counts.clear()
            self._windows.clear()
            self._expiry.clear()
        return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)
            self._windows.pop(key, None)
            self._expiry.pop(key, None)

    def keys(self) -> int:
        """How many keys are held (for tests of the sweep)."""
        return len(self._counts) + len(self._windows)

    def _maybe_sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        for key in [k for k, (_, ends) in self._counts.items() if ends <= now]:
            del self._counts[key]
        for key, window in list(self._windows.items()):
            _expire(window, now - self._expiry.get(key, 0))
            if not window:
                del self._windows[key]
                self._expiry.pop(key, None)


def _expire(window: deque[float], before: float) -> None:
    while window and window[0] <= before:
        window.popleft()
