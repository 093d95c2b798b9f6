"""The core streaming response: every way a stream can end, each observed for real."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import APIRouter, FastAPI, Request

from sluice.app import create_app
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format
from sluice.request_context import BODY_SEND
from sluice.runtime import Runtime
from sluice.settings import CoreSettings
from sluice.streaming import EndReason, StreamResponse, stream
from tests.support import asgi, logs
from tests.support.procs import free_port

pytestmark = pytest.mark.anyio


class Probe:
    """What the test app's producer and end callbacks saw."""

    def __init__(self) -> None:
        self.closed_at: float | None = None
        self.reasons: list[EndReason] = []
        self.ended = asyncio.Event()

    def on_end(self, reason: EndReason) -> None:
        self.reasons.append(reason)
        self.ended.set()


async def ticks(
    probe: Probe, count: int, delay: float, size: int, fail_at: int
) -> AsyncIterator[Event]:
    try:
        for i in range(count):
            if i == fail_at:
                raise RuntimeError("producer failed")
            yield Event(data="x" * size if size else {"i": i}, event="tick", id=str(i))
            await asyncio.sleep(delay)
    finally:
        probe.closed_at = time.perf_counter()


def make_app(probe: Probe, public: bool = True, **settings: object) -> FastAPI:
    def build(runtime: Runtime) -> APIRouter:
        router = APIRouter()

        @router.get("/ticks")
        @runtime.rates.limit()
        async def ticks_route(
            request: Request, count: int = 3, delay: float = 0.0, size: int = 0, fail_at: int = -1
        ) -> StreamResponse:
            fmt = choose_format(request, StreamFormat.SSE)
            events = ticks(probe, count, delay, size, fail_at)
            return await stream(request, events, fmt, on_end=[probe.on_end])

        return router

    config = CoreSettings(**{"service_name": "test", **settings})  # type: ignore[arg-type]
    return create_app(
        config, title="test", routers=[build], public_routes=["/ticks"] if public else []
    )


async def test_completed_stream_frames_every_event_and_ends_once() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        result = await asgi.request(app, "/ticks?count=3")
    assert result.status == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["x-accel-buffering"] == "no"
    assert "content-length" not in result.headers
    assert result.text.count("event: tick") == 3 and result.completed
    assert probe.reasons == [EndReason.COMPLETED]


async def test_ndjson_and_text_formats_from_query() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        nd = await asgi.request(app, "/ticks?count=2&format=ndjson")
        text = await asgi.request(app, "/ticks?count=2&format=text")
    assert nd.headers["content-type"] == "application/x-ndjson"
    assert (
        nd.text
        == '{"id":"0","event":"tick","data":{"i":0}}\n{"id":"1","event":"tick","data":{"i":1}}\n'
    )
    assert text.text == '{"i":0}\n{"i":1}\n'


async def test_client_disconnect_closes_producer_promptly() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        result = await asgi.request(app, "/ticks?count=1000&delay=0.5", leave_after=1)
        left = time.perf_counter()
    assert probe.reasons == [EndReason.CLIENT_DISCONNECT]
    assert probe.closed_at is not None and probe.closed_at - left < 0.1
    assert not result.completed


async def test_heartbeat_comment_after_idle_interval() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe, heartbeat_interval=0.1)) as app:
        result = await asgi.request(app, "/ticks?count=2&delay=0.55")
    pings = [t for c, t in zip(result.chunks, result.times, strict=True) if c == b": ping\n\n"]
    # Two 0.55 s silences, a ping every 0.1 s of silence: about 5 each.
    assert 8 <= len(pings) <= 11, pings
    gaps = [b - a for a, b in itertools.pairwise(pings) if b - a < 0.3]
    assert all(0.08 <= g <= 0.2 for g in gaps), gaps


async def test_heartbeat_only_on_sse() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe, heartbeat_interval=0.05)) as app:
        result = await asgi.request(app, "/ticks?count=2&delay=0.3&format=ndjson")
    assert b"ping" not in result.body


async def test_producer_error_ends_with_error_event() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        result = await asgi.request(app, "/ticks?count=5&fail_at=2")
    assert probe.reasons == [EndReason.ERROR]
    assert result.text.count("event: tick") == 2
    assert result.text.endswith(
        'event: error\ndata: {"type":"internal_error","message":"the stream failed"}\n\n'
    )
    assert result.completed


async def test_send_timeout_ends_stream_when_writes_block() -> None:
    """An ASGI send that never returns (a reader that stopped): ended after send_timeout."""
    probe = Probe()
    app = make_app(probe, send_timeout=0.3)
    async with asgi.lifespan(app):
        started = time.perf_counter()
        await asyncio.wait_for(asgi.stalled_client(app, "/ticks?count=100"), 5)
    assert probe.reasons == [EndReason.SEND_TIMEOUT]
    assert 0.25 <= time.perf_counter() - started < 2


def test_send_timeout_on_a_real_socket_that_stops_reading() -> None:
    """uvicorn over a real socket: the client never reads, kernel buffers fill, we give up."""
    probe = Probe()
    port = free_port()

    async def main() -> float:
        app = make_app(probe, send_timeout=0.5)
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="on"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /ticks?count=100000&size=65536&format=text HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            await asyncio.wait_for(probe.ended.wait(), 20)
            return time.perf_counter()
        finally:
            sock.close()
            server.should_exit = True
            await task

    asyncio.run(main())
    assert probe.reasons == [EndReason.SEND_TIMEOUT]


async def test_request_id_is_kept_when_safe_and_replaced_when_not() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        kept = await asgi.request(app, "/healthz", headers=[("x-request-id", "abc-123")])
        replaced = await asgi.request(
            app, "/healthz", headers=[("x-request-id", "evil\r\nSet-Cookie: x=1")]
        )
    assert kept.headers["x-request-id"] == "abc-123"
    assert len(replaced.headers["x-request-id"]) == 32
    assert "evil" not in replaced.headers["x-request-id"]


async def test_errors_are_json() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        missing = await asgi.request(app, "/nope")
        bad_format = await asgi.request(app, "/ticks?format=xml")
        invalid = await asgi.request(app, "/ticks?count=many")
    assert (
        missing.status == 404
        and missing.text == '{"error":{"type":"not_found","message":"Not Found"}}'
    )
    assert bad_format.status == 400 and '"invalid_format"' in bad_format.text
    assert invalid.status == 422 and '"field":"query.count"' in invalid.text


async def test_readyz_flips_to_503_when_draining_and_new_streams_are_refused() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe, drain_window=0.2)) as app:
        assert (await asgi.request(app, "/readyz")).status == 200
        app.state.runtime.drain.begin()
        ready = await asgi.request(app, "/readyz")
        refused = await asgi.request(app, "/ticks")
    assert ready.status == 503
    assert refused.status == 503 and refused.headers["retry-after"] == "2"
    assert '"draining"' in refused.text


async def test_regression_an_event_source_refused_with_503_while_draining_never_came_back() -> None:
    # EventSource fails for good on any answer but a 200 event stream: a 503 from a
    # draining worker (a pod whose endpoint is not yet removed) ended the page's stream.
    probe = Probe()
    async with asgi.lifespan(make_app(probe, drain_window=0.2, reconnect_retry_ms=1500)) as app:
        app.state.runtime.drain.begin()
        hinted = await asgi.request(app, "/ticks", headers=[("accept", "text/event-stream")])
    assert hinted.status == 200
    assert hinted.headers["content-type"].startswith("text/event-stream")
    assert hinted.text == (
        'event: reconnect\ndata: {"reason":"drain","retry_ms":1500}\nretry: 1500\n\n'
    )
    assert hinted.headers["connection"] == "close"


async def test_drain_sends_reconnect_event_within_window() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe, drain_window=0.3, reconnect_retry_ms=1500)) as app:
        task = asyncio.create_task(asgi.request(app, "/ticks?count=1000&delay=0.05"))
        await asyncio.sleep(0.2)
        began = time.perf_counter()
        app.state.runtime.drain.begin()
        result = await task
        took = time.perf_counter() - began
    assert probe.reasons == [EndReason.DRAIN]
    assert took <= 0.45
    assert result.text.endswith(
        'event: reconnect\ndata: {"reason":"drain","retry_ms":1500}\nretry: 1500\n\n'
    )
    assert result.completed


class ChunkCounter:
    """A user's middleware, added after create_app: it must see every body chunk."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counting(message: Any) -> None:
            if message["type"] == "http.response.body":
                self.bodies.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting)


async def test_stream_body_reaches_outer_middleware_and_the_access_log_counts_it() -> None:
    # Body chunks skip the layers inside the core's request middleware (they only look at
    # the response start); middleware outside it, and the access log's byte count, see all.
    probe = Probe()
    app = make_app(probe)
    seen: list[ChunkCounter] = []

    def counter(inner: Any) -> ChunkCounter:
        seen.append(ChunkCounter(inner))
        return seen[-1]

    app.add_middleware(counter)
    with logs.captured("sluice.access") as records:
        async with asgi.lifespan(app):
            result = await asgi.request(app, "/ticks?count=5")
    assert result.status == 200
    assert b"".join(seen[0].bodies) == result.body
    assert len([b for b in seen[0].bodies if b]) == 5
    (line,) = [r for r in records if getattr(r, "route", None) == "/ticks"]
    assert line.bytes == len(result.body) > 0  # type: ignore[attr-defined]


async def test_regression_every_request_left_a_reference_cycle_through_its_scope() -> None:
    # The body send published in the scope refers back to the scope (the server's send is
    # a method of the object holding it): left there, every request became a cycle that only
    # the garbage collector could free, and worker memory grew between collections.
    scopes: list[dict[str, Any]] = []

    def recorder(inner: Any) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            scopes.append(scope)
            await inner(scope, receive, send)

        return app

    app = make_app(Probe())
    app.add_middleware(recorder)
    async with asgi.lifespan(app):
        result = await asgi.request(app, "/ticks?count=2")
    assert result.status == 200
    http = [s for s in scopes if s["type"] == "http"]
    assert http and all(BODY_SEND not in s for s in http)
