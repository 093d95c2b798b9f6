"""What one worker of a service shares across its requests, built once by ``create_app``.

Generic in its settings: a service's router factory takes ``Runtime[ItsSettings]`` and gets
``runtime.settings`` typed as its own settings class; the core takes any
``Runtime[CoreSettings]`` (covariant: a runtime is never given other settings).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis

from sluice.auth import Authenticator
from sluice.caps import StreamCaps
from sluice.drain import Drain
from sluice.metrics import StreamMetrics
from sluice.rates import RateLimits
from sluice.settings import CoreSettings

S_co = TypeVar("S_co", bound=CoreSettings, covariant=True)
S = TypeVar("S", bound=CoreSettings)


@dataclass(frozen=True, slots=True)
class Runtime(Generic[S_co]):
    settings: S_co
    drain: Drain
    observer: StreamMetrics
    auth: Authenticator
    rates: RateLimits
    caps: StreamCaps
    redis: Redis | None
    # Opened at startup, closed at shutdown, in order (a router factory may add its own).
    resources: list[Callable[[Any], AbstractAsyncContextManager[None]]] = field(
        default_factory=list
    )
    # Asked by /readyz: None when ready, else a short reason (a router factory may add its own).
    readiness: list[Callable[[], Awaitable[str | None]]] = field(default_factory=list)
    # Histograms GET /_sluice/streams reports for the whole service beside each route's time
    # to first byte, short name -> metric name (a router factory may add its own).
    latencies: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: S, public_routes: Iterable[str] = ()) -> Runtime[S]:
        redis = bounded_redis(settings) if settings.redis_url else None
        return Runtime(
            settings=settings,
            drain=Drain(settings.drain_window),
            observer=StreamMetrics(settings.service_name),
            auth=Authenticator(settings, public_routes),
            rates=RateLimits(settings),
            caps=StreamCaps(settings, redis),
            redis=redis,
        )


def bounded_redis(settings: CoreSettings) -> Redis:
    """A client for ``SLUICE_REDIS_URL`` whose every command is bounded by
    ``SLUICE_REDIS_TIMEOUT`` (redis-py waits forever by default): a stalled Redis costs a
    request a 503 (see sluice.errors), not the worker its streams."""
    assert settings.redis_url is not None
    timeout = settings.redis_timeout
    redis: Redis = Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    return redis
