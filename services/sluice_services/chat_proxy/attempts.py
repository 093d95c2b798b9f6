"""Tries of one request over the fleet, until one reaches its first token: failover while
it is safe.

An attempt fails over (another endpoint is tried) only before a byte went to the client,
and only for what says nothing about the request itself: the endpoint unreachable, reset,
silent past the first-token timeout, a 5xx, a 429 (its ``Retry-After`` is the endpoint's
cooldown), a 401/403 (that deployment's key). A 4xx caused by the request (400, 404, 413,
422, ...) is the answer. At most ``routing.attempts`` tries, each on an endpoint not tried
yet, and all of them within ``deadline``: the client waits for one bounded time, not
attempts x timeouts. Each failed attempt is logged with its endpoint's name and address
(never its key), counted as a failover and as a breaker failure.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Generic, TypeVar

from sluice.errors import ApiError
from sluice_services.chat_proxy.balancer import pick
from sluice_services.chat_proxy.endpoints import Endpoint
from sluice_services.chat_proxy.metrics import COOLDOWNS, FAILOVERS

log = logging.getLogger("chat_proxy")

T = TypeVar("T")


class AttemptFailed(Exception):
    """One attempt failed; ``error`` is what the client gets if it was the last."""

    def __init__(
        self,
        reason: str,
        error: ApiError,
        *,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class Lease:
    """An endpoint slot a request holds until it ends: released once, however it ends."""

    __slots__ = ("_held", "endpoint")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._held = True
        endpoint.opened()

    def release(self) -> None:
        if self._held:
            self._held = False
            self.endpoint.closed()


class Outcome(Generic[T]):
    __slots__ = ("attempts", "lease", "value")

    def __init__(self, lease: Lease, value: T, attempts: int) -> None:
        self.lease = lease
        self.value = value
        self.attempts = attempts


Try = Callable[[Endpoint, float], Awaitable[T]]
"""One attempt on an endpoint within a time (s): its value, or AttemptFailed."""


async def attempt(
    candidates: Sequence[Endpoint],
    try_one: Try[T],
    *,
    attempts: int,
    deadline: float,
    model: str,
    service: str,
    turns: Iterator[int] | None = None,
) -> Outcome[T]:
    """The first attempt that succeeds, holding its endpoint's lease (the caller releases
    it); the last failure's error when none did, or a 503 when no endpoint was usable."""
    end = time.monotonic() + deadline
    tried: list[Endpoint] = []
    last: AttemptFailed | None = None
    while len(tried) < attempts:
        now = time.monotonic()
        left = end - now
        if left <= 0:
            break
        endpoint = pick(candidates, now, tried, turn=next(turns) if turns else None)
        if endpoint is None:
            break
        tried.append(endpoint)
        endpoint.breaker.begin(now)
        lease = Lease(endpoint)
        started = time.perf_counter()
        try:
            value = await try_one(endpoint, left)
        except AttemptFailed as failed:
            lease.release()
            if not failed.retryable:
                endpoint.breaker.abandon()  # (the request's fault: no verdict on the endpoint)
                raise failed.error from None
            _failed(endpoint, failed, time.perf_counter() - started, len(tried), model, service)
            last = failed
            continue
        except BaseException:
            lease.release()
            endpoint.breaker.abandon()
            raise
        endpoint.breaker.success()
        endpoint.mark_cooling()
        return Outcome(lease, value, len(tried))
    if last is not None:
        error = last.error
        if len(tried) > 1:
            error.message = f"{len(tried)} attempts failed; the last: {error.message}"
        raise error
    raise _none_usable(candidates, model)


def _failed(
    endpoint: Endpoint, failed: AttemptFailed, took: float, number: int, model: str, service: str
) -> None:
    now = time.monotonic()
    breaker = endpoint.breaker
    if failed.retry_after is not None:
        opened = breaker.retry_after(now, failed.retry_after)
    else:
        opened = breaker.failure(now)
    FAILOVERS.labels(service, endpoint.name, failed.reason).inc()
    if failed.reason in ("connect", "reset"):
        endpoint.unreachable()
    if opened:
        COOLDOWNS.labels(service, endpoint.name).inc()
    endpoint.mark_cooling()
    log.warning(
        "upstream attempt failed",
        extra={
            "upstream": endpoint.name,
            "address": endpoint.address,
            "attempt": number,
            "reason": failed.reason,
            "error": failed.error.message,
            "attempt_seconds": round(took, 4),
            "model": model,
            "cooldown_seconds": round(breaker.until - now, 3) if opened else None,
        },
    )


def _none_usable(candidates: Sequence[Endpoint], model: str) -> ApiError:
    now = time.monotonic()
    live = [e for e in candidates if not e.retired]
    if any(e.full and e.breaker.available(now) for e in live):
        return ApiError(
            503,
            "server_full",
            f"every endpoint serving {model!r} is at its stream cap; retry shortly",
            headers={"Retry-After": "1"},
            fields={"param": None, "code": "server_full"},
        )
    cooling = [e.breaker.until - now for e in live if e.breaker.cooling(now)]
    retry = max(1, math.ceil(min(cooling))) if cooling else 1
    what = "is in cooldown" if cooling else "was resolved"
    return ApiError(
        503,
        "upstream_unavailable",
        f"no endpoint serving {model!r} {what}; retry in {retry} s"
        if cooling
        else f"no endpoint serving {model!r} {what} yet",
        headers={"Retry-After": str(retry)},
        fields={"param": None, "code": "upstream_unavailable"},
    )
