"""Request rates: 429s with their headers, per key or address, shared through Redis, and the
limiter's storage that a service's own counters use."""

from __future__ import annotations

import json
import socket
import time

import pytest
from fastapi import FastAPI
from limits import parse
from limits.strategies import FixedWindowRateLimiter
from pydantic import SecretStr

from sluice.limit_storage import LoopMemoryStorage
from sluice.metrics import RATE_LIMITED
from sluice.rates import RateLimits
from sluice.settings import CoreSettings
from tests.sluice.test_streaming import Probe, make_app
from tests.support import asgi
from tests.support.metrics import counted
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio

KEY_A = "sk-test-aaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbbbbbbbbbb"
KEYS = SecretStr(f"{KEY_A},{KEY_B}")


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def limited(limit: str) -> float:
    return counted(RATE_LIMITED.labels("test", "/ticks", limit))


async def test_rate_limit_is_429_json_with_headers_per_key() -> None:
    before = limited("rate")
    async with asgi.lifespan(
        make_app(Probe(), public=False, api_keys=KEYS, rate_limit="3/minute")
    ) as app:
        ok = [await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_A)) for _ in range(3)]
        refused = await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_A))
        other_key = await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_B))
    assert [r.status for r in ok] == [200, 200, 200]
    assert ok[0].headers["x-ratelimit-limit"] == "3"
    assert ok[2].headers["x-ratelimit-remaining"] == "0"
    assert refused.status == 429
    assert json.loads(refused.body)["error"]["type"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 61
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert other_key.status == 200
    assert limited("rate") == before + 1


async def test_anonymous_callers_are_limited_by_address() -> None:
    async with asgi.lifespan(make_app(Probe(), rate_limit="2/minute")) as app:
        codes = [(await asgi.request(app, "/ticks?count=1")).status for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_rate_limits_shared_through_redis(redis_server: Proc) -> None:
    service_name = f"rate-{time.time_ns()}"

    def worker() -> FastAPI:
        return make_app(
            Probe(),
            public=False,
            api_keys=KEYS,
            redis_url=redis_server.extra["url"],
            rate_limit="4/minute",
            service_name=service_name,
        )

    one, two = worker(), worker()
    async with asgi.lifespan(one), asgi.lifespan(two):
        codes = []
        for i in range(6):
            app = one if i % 2 else two
            codes.append((await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_A))).status)
    assert codes == [200, 200, 200, 200, 429, 429]


async def test_regression_a_hung_redis_froze_the_worker_in_the_rate_limit_check() -> None:
    # slowapi's Redis client is synchronous and redis-py waits forever by default: a Redis
    # that accepts but never answers held the worker's event loop, and every stream on it.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel completes the handshake; nothing ever answers
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        app = make_app(Probe(), public=False, api_keys=KEYS, redis_url=url)
        async with asgi.lifespan(app):
            started = time.monotonic()
            result = await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_A))
            took = time.monotonic() - started
    assert result.status == 503
    error = json.loads(result.body)["error"]
    assert error["type"] == "unavailable" and "Redis" in error["message"]
    assert result.headers["retry-after"] == "1"
    assert took < 5  # bounded by the timeout, not by TCP's minutes


async def test_regression_every_200_stream_carried_retry_after() -> None:
    # slowapi's rate-limit headers add Retry-After to every response; only 429/503 mean it.
    probe = Probe()
    async with asgi.lifespan(make_app(probe, rate_limit="2/minute")) as app:
        first = await asgi.request(app, "/ticks?count=1")
        second = await asgi.request(app, "/ticks?count=1")
        limited = await asgi.request(app, "/ticks?count=1")
    for ok in (first, second):
        assert ok.status == 200
        assert "retry-after" not in ok.headers
        assert "x-ratelimit-limit" in ok.headers  # the limit's own headers stay
    assert limited.status == 429 and int(limited.headers["retry-after"]) >= 1


def test_a_services_own_counter_in_the_rate_storage_is_per_worker_without_redis() -> None:
    one = RateLimits(CoreSettings(service_name="test"))
    two = RateLimits(CoreSettings(service_name="test"))  # another worker
    assert isinstance(one.storage, LoopMemoryStorage)
    assert one.storage is one.limiter.limiter.storage  # the route limits' own
    budget, other = FixedWindowRateLimiter(one.storage), FixedWindowRateLimiter(two.storage)
    item = parse("5/minute")
    assert budget.hit(item, "sluice:test:tokens", "key:a", cost=5)
    assert not budget.test(item, "sluice:test:tokens", "key:a")
    assert budget.test(item, "sluice:test:tokens", "key:b")  # per caller
    assert other.test(item, "sluice:test:tokens", "key:a")  # per worker


def test_a_services_own_counter_in_the_rate_storage_is_shared_through_redis(
    redis_server: Proc,
) -> None:
    settings = CoreSettings(
        service_name=f"own-{time.time_ns()}", redis_url=redis_server.extra["url"]
    )
    one, two = RateLimits(settings), RateLimits(settings)  # two workers, or replicas
    item = parse("5/minute")
    assert FixedWindowRateLimiter(one.storage).hit(item, "tokens", "key:a", cost=5)
    assert not FixedWindowRateLimiter(two.storage).test(item, "tokens", "key:a")
