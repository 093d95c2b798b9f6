"""Append-only logs in this process's memory, each read after a position, then live.

A log's items are numbered from 1 as they are appended. A reader gets every item after a
number (replay), then each new one as it is appended (live), in order, with no duplicate,
and stops after the item appended as final. With ``max_items``, a log keeps only its newest
items: a reader too far behind skips what was dropped. A dropped log takes no more items;
its readers get what it held, then stop. The in-memory twin of
:mod:`sluice.stream_follower`'s Redis Streams (embedded mode, and readers of the process
that writes).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Log(Generic[T]):
    __slots__ = ("dropped", "final", "first", "grown", "items")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.first = 1  # the number of items[0]
        self.final = False
        self.dropped = False
        self.grown = asyncio.Event()  # set, then replaced, at each change

    @property
    def last(self) -> int:
        return self.first + len(self.items) - 1

    def changed(self) -> None:
        self.grown.set()
        self.grown = asyncio.Event()


class MemoryLog(Generic[T]):
    """Logs by key, each at most ``max_items`` long (0: unbounded)."""

    def __init__(self, max_items: int = 0) -> None:
        self.max_items = max_items
        self._logs: dict[str, _Log[T]] = {}
        self._readers = 0

    @property
    def readers(self) -> int:
        """Readers open now, of every log."""
        return self._readers

    def open(self, key: str) -> None:
        self._logs[key] = _Log()

    def drop(self, key: str) -> None:
        log = self._logs.pop(key, None)
        if log is not None:
            log.dropped = True
            log.changed()

    def __contains__(self, key: str) -> bool:
        return key in self._logs

    def last(self, key: str) -> int:
        """The number of the log's last item (0: none, or no such log)."""
        log = self._logs.get(key)
        return log.last if log is not None else 0

    def append(self, key: str, item: T, final: bool = False) -> int:
        """Add an item (and end the log, if ``final``); its number. A log that ended or is
        gone takes nothing more (0)."""
        log = self._logs.get(key)
        if log is None or log.final:
            return 0
        log.items.append(item)
        if self.max_items and len(log.items) > self.max_items:
            log.items.popleft()
            log.first += 1
        log.final = final
        log.changed()
        return log.last

    async def read(self, key: str, after: int) -> AsyncGenerator[tuple[int, T], None]:
        """Every item after number ``after``, then each new one, up to the final one."""
        log = self._logs.get(key)
        if log is None:
            return
        self._readers += 1
        try:
            position = after
            while True:
                grown = log.grown
                while position < log.last:
                    position = max(position + 1, log.first)  # (dropped by the bound: skipped)
                    yield position, log.items[position - log.first]
                if log.final or log.dropped:
                    return
                await grown.wait()
        finally:
            self._readers -= 1
