"""One timer for "this has waited too long", with one timer handle per watched thing.

A stream's writes (a client that stopped reading) and a proxy's reads (an upstream that
stopped answering) both need the same watch: fail when one wait, or waits that ended in
nothing that counts, add up to a timeout. A timeout around every wait would arm and cancel a timer
per chunk; this keeps one handle that is re-armed lazily: a wait only records when it
began, and the handle, when it fires, looks at what happened since and sets itself again
for the moment the watch could expire next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StallTimer:
    """Calls ``on_stall`` once, when waits add up to ``timeout`` seconds since the last reset.

    :meth:`wait_began` and :meth:`wait_ended` bracket each wait (a read, a write). A wait
    that ends in something that counts (a write done, bytes that say something) resets the
    count; one that ends in nothing that does (``reset=False``: an upstream's SSE comment)
    adds its time to it. Time between waits never counts.
    ``on_stall`` runs from the event loop, at most once; nothing runs after :meth:`stop`.
    """

    __slots__ = (
        "_handle",
        "_loop",
        "_silent",
        "_since",
        "_waiting",
        "on_stall",
        "stalled",
        "timeout",
    )

    def __init__(self, timeout: float, on_stall: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_stall = on_stall
        self.stalled = False  # on_stall was called (or is being called)
        self._loop = asyncio.get_running_loop()
        self._since = self._loop.time()  # when the current wait began
        self._silent = 0.0  # seconds waited in earlier waits since the last reset
        self._waiting = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(
            self._since + timeout, self._check
        )

    def wait_began(self) -> None:
        self._waiting = True
        self._since = self._loop.time()

    def wait_ended(self, reset: bool = True) -> None:
        self._waiting = False
        self._silent = 0.0 if reset else self._silent + self._loop.time() - self._since

    def stop(self) -> None:
        """No call to ``on_stall`` from now on (idempotent, also after it was called)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        now = self._loop.time()
        # When the watch expires if nothing changes: a wait under way from its start; between
        # waits, a wait beginning now (the earliest one could expire).
        due = (self._since if self._waiting else now) + self.timeout - self._silent
        if now < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._handle = None
        self.stalled = True
        self.on_stall()
