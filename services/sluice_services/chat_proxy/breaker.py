"""An endpoint's circuit breaker: taken out after failures in a row, tried again with one
request after a cooldown.

Closed: traffic as usual; ``failures`` failed attempts in a row open it. Open: no traffic
until the cooldown ends; then the next request is the one probe (half-open) and nobody
else gets the endpoint while it is out. A probe that succeeds closes the breaker; one that
fails opens it again for twice the last cooldown (up to ``MAX_FACTOR`` times the first), so a
replica that stays down costs one request per cooldown, not one per user. A 429 with
``Retry-After`` is a cooldown of that length at once: the server said when to come back.

Per worker: each worker learns about its endpoints from its own traffic (no shared state,
nothing to stall on); a dead replica costs each worker ``failures`` attempts, each failed
over before the first byte.
"""

from __future__ import annotations

import enum

MAX_FACTOR = 10  # a cooldown grows to at most this many first cooldowns
MAX_RETRY_AFTER = 300.0  # a Retry-After longer than this is taken as this


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = ("_cooldown", "_current", "_failures", "failed", "probing", "state", "until")

    def __init__(self, failures: int, cooldown: float) -> None:
        self._failures = failures
        self._cooldown = cooldown
        self._current = cooldown
        self.state = State.CLOSED
        self.failed = 0  # failures in a row
        self.until = 0.0  # (open) the cooldown's end, monotonic
        self.probing = False  # (half-open) the probe is out

    def available(self, now: float) -> bool:
        """Whether a new request may go to the endpoint now."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            return now >= self.until
        return not self.probing

    def cooling(self, now: float) -> bool:
        """Out of traffic: open and its cooldown not over, or its probe still out."""
        return not self.available(now) and self.state is not State.CLOSED

    def begin(self, now: float) -> None:
        """A request goes to the endpoint: past an open breaker's cooldown, it is the probe."""
        if self.state is State.OPEN and now >= self.until:
            self.state = State.HALF_OPEN
        if self.state is State.HALF_OPEN:
            self.probing = True

    def success(self) -> None:
        self.state = State.CLOSED
        self.failed = 0
        self.probing = False
        self._current = self._cooldown

    def failure(self, now: float) -> bool:
        """A failed attempt; True when it (re)opened the breaker."""
        self.failed += 1
        if self.state is State.HALF_OPEN:
            self._current = min(self._current * 2, self._cooldown * MAX_FACTOR)
            return self._open(now, self._current)
        if self.state is State.CLOSED and self.failed >= self._failures:
            return self._open(now, self._current)
        return False

    def retry_after(self, now: float, seconds: float) -> bool:
        """The endpoint said when to come back (a 429's Retry-After): out until then."""
        self.failed += 1
        return self._open(now, min(max(seconds, 0.0), MAX_RETRY_AFTER))

    def abandon(self) -> None:
        """The probe ended with no verdict (the client left first): another may probe."""
        self.probing = False

    def _open(self, now: float, seconds: float) -> bool:
        opened = self.state is not State.OPEN or self.until <= now
        self.state = State.OPEN
        self.until = max(self.until, now + seconds)
        self.probing = False
        return opened
