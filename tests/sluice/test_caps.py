"""Stream caps: refusals per key, worker and service, and slots released exactly once on
every end path, in memory and through Redis leases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator

import pytest
from fastapi import APIRouter, FastAPI, Request

from sluice.admission import stream
from sluice.app import create_app
from sluice.caps import StreamCaps
from sluice.events import Event
from sluice.formats import StreamFormat
from sluice.runtime import Runtime
from sluice.settings import CoreSettings
from sluice.streaming import EndReason, StreamResponse
from tests.sluice.test_rates import KEY_A, KEY_B, KEYS, bearer
from tests.sluice.test_streaming import Probe, make_app
from tests.support import asgi
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio


async def _hold(app: FastAPI, key: str | None) -> asyncio.Task[asgi.Result]:
    headers = bearer(key) if key else []
    target = "/ticks?count=100000&delay=0.05"
    task = asyncio.create_task(asgi.request(app, target, headers=headers, timeout=30))
    await asyncio.sleep(0.05)
    return task


async def test_stream_cap_per_key_is_429_and_frees_when_a_stream_ends() -> None:
    probe = Probe()
    async with asgi.lifespan(
        make_app(probe, public=False, api_keys=KEYS, max_streams_per_key=2, drain_window=0)
    ) as app:
        held = [await _hold(app, KEY_A), await _hold(app, KEY_A)]
        third = await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_A))
        other = await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_B))
        app.state.runtime.drain.begin()  # end the held streams
        await asyncio.gather(*held)
        app.state.runtime.drain.draining = app.state.runtime.drain.refusing = False
        again = await asgi.request(app, "/ticks?count=1", headers=bearer(KEY_A))
    assert third.status == 429
    assert json.loads(third.body)["error"]["type"] == "too_many_streams"
    assert third.headers["retry-after"] == "5"
    assert other.status == 200
    assert again.status == 200


async def test_worker_cap_is_503_server_full() -> None:
    async with asgi.lifespan(make_app(Probe(), max_streams_per_worker=1, drain_window=0)) as app:
        held = await _hold(app, None)
        full = await asgi.request(app, "/ticks?count=1")
        app.state.runtime.drain.begin()
        await held
    assert full.status == 503
    assert json.loads(full.body)["error"]["type"] == "server_full"
    assert "retry-after" in full.headers


async def _end_path(app: FastAPI, reason: EndReason) -> None:
    runtime = app.state.runtime
    if reason is EndReason.COMPLETED:
        await asgi.request(app, "/ticks?count=2")
    elif reason is EndReason.CLIENT_DISCONNECT:
        await asgi.request(app, "/ticks?count=1000&delay=0.01", leave_after=2)
    elif reason is EndReason.ERROR:
        await asgi.request(app, "/ticks?count=5&fail_at=1")
    elif reason is EndReason.DRAIN:
        task = asyncio.create_task(asgi.request(app, "/ticks?count=1000&delay=0.01"))
        await asyncio.sleep(0.05)
        runtime.drain.begin()
        await task
        runtime.drain.draining = runtime.drain.refusing = False
    elif reason is EndReason.CANCELLED:  # as uvicorn does past its graceful timeout
        task = asyncio.create_task(asgi.request(app, "/ticks?count=1000&delay=0.01"))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    else:
        await asgi.stalled_client(app, "/ticks?count=100")


@pytest.mark.parametrize("reason", list(EndReason))
async def test_slot_released_exactly_once_on_every_end_path(reason: EndReason) -> None:
    probe = Probe()
    app = make_app(probe, max_streams_per_key=1, drain_window=0, send_timeout=0.2)
    async with asgi.lifespan(app):
        caps = app.state.runtime.caps
        for _ in range(2):  # twice: a leaked slot would refuse the second at cap 1
            await _end_path(app, reason)
            assert caps.local_total == 0
            assert dict(caps.local) == {}
    assert probe.reasons == [reason, reason]


async def test_redis_caps_hold_across_workers_and_expire_with_a_dead_one(
    redis_server: Proc,
) -> None:
    url = redis_server.extra["url"]

    def worker() -> FastAPI:
        return make_app(
            Probe(),
            public=False,
            api_keys=KEYS,
            redis_url=url,
            max_streams_per_key=2,
            max_streams_global=3,
            service_name="caps-test",
            drain_window=0,
        )

    one, two = worker(), worker()  # two "workers"
    async with asgi.lifespan(one), asgi.lifespan(two):
        await one.state.runtime.redis.flushdb()
        held = [await _hold(one, KEY_A), await _hold(two, KEY_A)]
        over_key = await asgi.request(two, "/ticks?count=1", headers=bearer(KEY_A))
        held.append(await _hold(one, KEY_B))
        over_global = await asgi.request(two, "/ticks?count=1", headers=bearer(KEY_B))
        for app in (one, two):
            app.state.runtime.drain.begin()
        await asyncio.gather(*held)
        await asyncio.sleep(0.1)  # releases go to Redis in the background
        for app in (one, two):
            app.state.runtime.drain.draining = app.state.runtime.drain.refusing = False
        after = await asgi.request(two, "/ticks?count=1", headers=bearer(KEY_A))

        # A worker that dies holding slots: its leases run out, no release needed.
        caps = one.state.runtime.caps
        caps.lease_seconds = 0.5
        fake_request = type("R", (), {})()
        fake_request.state = type("S", (), {"principal": None})()
        fake_request.client = type("C", (), {"host": "10.9.9.9"})()
        fake_request.scope = {}
        dead = [await caps.acquire(fake_request) for _ in range(2)]
        for slot in dead:
            assert slot._refresh is not None
            slot._refresh.cancel()  # the worker is gone: no more lease refreshes
        refused_while_leased = await _try(caps, fake_request)
        await asyncio.sleep(0.7)
        accepted_after_expiry = await _try(caps, fake_request)
    assert over_key.status == 429
    assert over_global.status == 503
    assert after.status == 200
    assert refused_while_leased == 429
    assert accepted_after_expiry == 0


async def _try(caps: StreamCaps, request: Request) -> int:
    from sluice.errors import ApiError

    try:
        slot = await caps.acquire(request)
    except ApiError as exc:
        return exc.status
    slot.release()
    return 0


async def test_regression_a_hung_redis_held_a_new_stream_in_its_cap_lease_forever() -> None:
    # The core's async Redis client (stream-cap leases, readiness) had no timeout either: a
    # stream past the rate limit waited on a Redis that never answers, for ever.
    async def beats() -> AsyncIterator[Event]:
        yield Event(data="x")

    def build(runtime: Runtime[CoreSettings]) -> APIRouter:
        router = APIRouter()

        @router.get("/unlimited", response_class=StreamResponse)
        async def unlimited(request: Request) -> StreamResponse:
            return await stream(request, beats(), StreamFormat.SSE)

        return router

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        settings = CoreSettings(service_name="test", redis_url=url, redis_timeout=0.5)
        app = create_app(settings, title="t", routers=[build], public_routes=["/unlimited"])
        async with asgi.lifespan(app):
            started = time.monotonic()
            result = await asgi.request(app, "/unlimited", timeout=10)
            took = time.monotonic() - started
    assert result.status == 503
    assert json.loads(result.body)["error"]["type"] == "unavailable"
    assert took < 3


async def test_a_browsers_stream_that_redis_fails_to_open_gets_a_reconnect_hint_not_a_503() -> None:
    # An EventSource gives up for good on a 503: a Redis that fails (here: refuses) while its
    # stream's cap lease is taken answers it as a drain does, with a hint to come back.
    def build(runtime: Runtime[CoreSettings]) -> APIRouter:
        router = APIRouter()

        @router.get("/unlimited", response_class=StreamResponse)
        async def unlimited(request: Request) -> StreamResponse:
            return await stream(request, one_event(), StreamFormat.SSE)

        return router

    async def one_event() -> AsyncIterator[Event]:
        yield Event(data="x")

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections refused
        url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
        settings = CoreSettings(service_name="test", redis_url=url, redis_timeout=0.5)
        app = create_app(settings, title="t", routers=[build], public_routes=["/unlimited"])
        async with asgi.lifespan(app):
            browser = await asgi.request(
                app, "/unlimited", headers=[("accept", "text/event-stream")], timeout=10
            )
            client = await asgi.request(app, "/unlimited", timeout=10)
    assert browser.status == 200
    assert browser.headers["content-type"].startswith("text/event-stream")
    (frame,) = [f for f in browser.text.split("\n\n") if f]
    lines = dict(line.split(": ", 1) for line in frame.splitlines())
    assert lines["event"] == "reconnect"
    hint = json.loads(lines["data"])
    assert hint["reason"] == "unavailable"
    assert 1000 <= hint["retry_ms"] <= 2000 + settings.reconnect_retry_ms
    assert lines["retry"] == str(hint["retry_ms"])
    assert client.status == 503  # an API client is told, and retries after Retry-After
    assert client.headers["retry-after"] == "1"
    assert json.loads(client.body)["error"]["type"] == "unavailable"
