"""How often one caller may call a route: request rates, with slowapi.

Rates use slowapi's ``Limiter`` as a decorator on routes (never its ASGI middleware, which
re-sends the response start on every chunk of a stream: slowapi #249). Storage is
in-process per worker (``sluice-memory://``, see :mod:`sluice.limit_storage`), or Redis
when ``SLUICE_REDIS_URL`` is set, so a limit holds across workers and replicas. Callers are
counted by :func:`sluice.caller.caller_key`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from limits.storage import Storage
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded
from starlette.responses import Response

from sluice import limit_storage  # registers sluice-memory:// with limits
from sluice.caller import caller_key
from sluice.errors import error_response
from sluice.metrics import RATE_LIMITED
from sluice.request_context import route_template
from sluice.settings import CoreSettings

F = TypeVar("F", bound=Callable[..., Any])
# Seconds one rate-limit check may wait for Redis: slowapi's client is synchronous, so the
# wait holds the worker's event loop (every open stream); a hung Redis costs a request a 503.
REDIS_TIMEOUT = 0.5


class RateLimits:
    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        # slowapi's Redis client is synchronous: each check holds the worker's event loop, and
        # every open stream with it. Bounded, a Redis that hangs costs a request a 503, not
        # the worker its streams (redis-py waits forever by default).
        options: dict[str, Any] = {
            "socket_timeout": REDIS_TIMEOUT,
            "socket_connect_timeout": REDIS_TIMEOUT,
        }
        self.limiter = _Limiter(
            key_func=caller_key,
            storage_uri=settings.redis_url or f"{limit_storage.SCHEME}://",
            storage_options=options if settings.redis_url else {},
            headers_enabled=True,
            key_prefix=f"sluice:{settings.service_name}",
            strategy="moving-window",
        )

    @property
    def storage(self) -> Storage:
        """Where the limits count (memory, or Redis across replicas): for a service's own
        counters with the ``limits`` strategies (a token budget), kept where the rates are."""
        storage: Storage = self.limiter.limiter.storage
        return storage

    def limit(self, value: str | None = None) -> Callable[[F], F]:
        """Decorator for a route: ``value`` or ``SLUICE_RATE_LIMIT`` per caller."""
        decorator: Callable[[F], F] = self.limiter.limit(value or self.settings.rate_limit)
        return decorator

    async def exceeded(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RateLimitExceeded)
        RATE_LIMITED.labels(self.settings.service_name, route_template(request.scope), "rate").inc()
        headers: dict[str, str] = {}
        current = getattr(request.state, "view_rate_limit", None)
        retry_after = 1
        if current is not None:
            item, args = current
            with contextlib.suppress(Exception):
                reset, remaining = self.limiter.limiter.get_window_stats(item, *args)
                retry_after = max(1, int(reset - time.time()) + 1)
                headers["X-RateLimit-Limit"] = str(item.amount)
                headers["X-RateLimit-Remaining"] = str(remaining)
                headers["X-RateLimit-Reset"] = str(int(reset))
        headers["Retry-After"] = str(retry_after)
        return error_response(
            429,
            "rate_limited",
            f"rate limit exceeded: {exc.detail}; retry in {retry_after} s",
            headers,
        )


class _Limiter(Limiter):  # slowapi is untyped (Any): nothing for mypy to check here
    """slowapi's limiter, but ``Retry-After`` only where it means something (429, 503):
    slowapi's headers put one on every response, a 200 stream's included."""

    def _inject_headers(self, response: Response, current_limit: Any) -> Response:
        had_retry_after = "retry-after" in response.headers
        response = super()._inject_headers(response, current_limit)
        if not had_retry_after and response.status_code not in (429, 503):
            with contextlib.suppress(KeyError):
                del response.headers["retry-after"]
        return response
