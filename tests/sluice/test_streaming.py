"""The core streaming response: every way a stream can end, each observed for real."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import starlette
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import REGISTRY

from sluice.admission import stream
from sluice.app import create_app
from sluice.drain import DrainPolicy
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format
from sluice.request_context import BODY_SEND
from sluice.runtime import Runtime
from sluice.settings import CoreSettings
from sluice.streaming import EndReason, StreamResponse
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
    def build(runtime: Runtime[CoreSettings]) -> APIRouter:
        router = APIRouter()

        @router.get("/ticks", response_class=StreamResponse)
        @runtime.rates.limit()
        async def ticks_route(
            request: Request,
            count: int = 3,
            delay: float = 0.0,
            size: int = 0,
            fail_at: int = -1,
            policy: DrainPolicy = "reconnect",
        ) -> StreamResponse:
            fmt = choose_format(request, StreamFormat.SSE)
            events = ticks(probe, count, delay, size, fail_at)
            return await stream(request, events, fmt, on_end=[probe.on_end], drain=policy)

        @router.get("/things")
        async def things() -> dict[str, list[int]]:
            """A JSON route (not a stream), needing a key unless public."""
            return {"things": [1, 2]}

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
        and missing.text
        == '{"error":{"type":"not_found","message":"Not Found","param":null,"code":"not_found"}}'
    )
    assert bad_format.status == 400 and '"invalid_format"' in bad_format.text
    assert invalid.status == 422 and '"field":"query.count"' in invalid.text


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


async def test_stream_body_chunks_go_from_the_route_to_the_server_past_starlettes_layers() -> None:
    # With nothing added outside the core's request middleware, the server's send is called
    # for a body chunk by the stream itself (Starlette's error middleware wrapped every
    # chunk: ~2% of a token proxy's CPU); the response start still goes through every layer.
    app = make_app(Probe())
    callers: dict[str, list[str]] = {"http.response.start": [], "http.response.body": []}

    async def server(scope: Any, receive: Any, send: Any) -> None:
        async def recording(message: Any) -> None:
            caller = sys._getframe(1).f_code.co_filename.replace(os.sep, "/")
            callers[message["type"]].append(caller)
            await send(message)

        await app(scope, receive, recording)

    async with asgi.lifespan(app):
        result = await asgi.request(cast(FastAPI, server), "/ticks?count=5")
    assert result.status == 200 and len(result.chunks) == 5
    assert callers["http.response.start"] == [
        str(Path(starlette.__file__).parent / "middleware" / "errors.py").replace(os.sep, "/")
    ]
    assert len(callers["http.response.body"]) == 6  # 5 ticks and the end
    streaming = inspect.getfile(StreamResponse).replace(os.sep, "/")
    assert set(callers["http.response.body"]) == {streaming}  # the stream, and nothing between


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


async def test_regression_a_cancelled_stream_recorded_no_end_and_leaked_its_cap_slot() -> None:
    # uvicorn cancels the responses still running past its graceful timeout. The end (the
    # metrics, the log line, the on_end callbacks that release cap slots) was recorded after
    # the first try/finally, so the CancelledError skipped it: the slot leaked and
    # sluice_streams_active never went down.
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        runtime = app.state.runtime
        before = _sample("sluice_streams_active", route="/ticks")
        task = asyncio.create_task(asgi.request(app, "/ticks?count=1000&delay=0.05"))
        await asyncio.sleep(0.2)
        assert runtime.caps.local_total == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = _sample("sluice_streams_active", route="/ticks")
        ended = _sample("sluice_streams_ended_total", route="/ticks", reason="cancelled")
        assert runtime.caps.local_total == 0
        assert runtime.drain.open_streams == 0
    assert probe.reasons == [EndReason.CANCELLED]
    assert probe.closed_at is not None  # the producer's finally ran
    assert after == before
    assert ended is not None and ended >= 1


async def test_a_stream_cancelled_again_while_it_cleans_up_still_records_its_end_once() -> None:
    closing = asyncio.Event()
    probe = Probe()

    async def slow_to_close() -> AsyncIterator[Event]:
        try:
            while True:
                yield Event(data="x")
                await asyncio.sleep(0.05)
        finally:
            closing.set()
            await asyncio.sleep(5)  # a producer whose cleanup awaits; cancelled again here

    def build(runtime: Runtime[CoreSettings]) -> APIRouter:
        router = APIRouter()

        @router.get("/slow", response_class=StreamResponse)
        async def slow(request: Request) -> StreamResponse:
            return await stream(request, slow_to_close(), StreamFormat.SSE, on_end=[probe.on_end])

        return router

    app = create_app(
        CoreSettings(service_name="test"), title="t", routers=[build], public_routes=["/slow"]
    )
    async with asgi.lifespan(app):
        task = asyncio.create_task(asgi.request(app, "/slow"))
        await asyncio.sleep(0.15)
        task.cancel()
        await asyncio.wait_for(closing.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert app.state.runtime.caps.local_total == 0
    assert probe.reasons == [EndReason.CANCELLED]


async def test_a_drained_endless_text_stream_is_cut_not_ended_cleanly() -> None:
    # A clean end after part of a plain-text answer looks, to curl and every HTTP client,
    # like the whole answer: text has no reconnect hint, so the drain drops the connection.
    probe = Probe()
    async with asgi.lifespan(make_app(probe, drain_window=0.2)) as app:
        task = asyncio.create_task(asgi.request(app, "/ticks?count=1000&delay=0.02&format=text"))
        await asyncio.sleep(0.1)
        app.state.runtime.drain.begin()
        result = await task
    assert probe.reasons == [EndReason.DRAIN]
    assert result.status == 200 and result.chunks
    assert not result.completed  # no final chunk: the server closes the connection


def test_a_drained_text_stream_on_a_real_socket_is_a_cut_and_logs_no_error() -> None:
    """uvicorn over a real socket: the client reads a chunked body that never ends properly,
    and the server's "returned without completing" line is not logged for a planned cut."""
    probe = Probe()
    port = free_port()

    async def main() -> bytes:
        app = make_app(probe, drain_window=0.1)
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="on"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ticks?count=1000&delay=0.02&format=text HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            await reader.readuntil(b"\r\n\r\n")
            app.state.runtime.drain.begin()
            async with asyncio.timeout(5):
                return await reader.read(-1)  # until the server closes
        finally:
            writer.close()
            server.should_exit = True
            await task

    with logs.captured("uvicorn.error") as records:
        body = asyncio.run(main())
    assert probe.reasons == [EndReason.DRAIN]
    assert body and not body.endswith(b"0\r\n\r\n")  # chunked, without its last chunk
    assert not [r for r in records if "without completing" in r.getMessage()]


async def test_a_finite_text_stream_finishes_within_the_drain_window() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe, drain_window=1.0)) as app:
        target = "/ticks?count=10&delay=0.03&format=text&policy=finish"
        task = asyncio.create_task(asgi.request(app, target))
        await asyncio.sleep(0.05)
        app.state.runtime.drain.begin()
        result = await task
    assert probe.reasons == [EndReason.COMPLETED]
    assert result.completed and result.text.count("\n") == 10


async def test_a_finite_text_stream_still_running_when_the_window_ends_is_cut() -> None:
    probe = Probe()
    async with asgi.lifespan(make_app(probe, drain_window=0.2)) as app:
        target = "/ticks?count=100&delay=0.05&format=text&policy=finish"
        task = asyncio.create_task(asgi.request(app, target))
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        app.state.runtime.drain.begin()
        result = await task
        took = time.perf_counter() - began
    assert probe.reasons == [EndReason.DRAIN]
    assert not result.completed
    assert 0.15 <= took < 1.0


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"service": "test", **labels})


async def test_regression_a_trailing_slash_redirected_to_the_host_header() -> None:
    # Starlette redirected /ticks/ to http://<Host header>/ticks: an open redirect.
    probe = Probe()
    async with asgi.lifespan(make_app(probe)) as app:
        result = await asgi.request(app, "/ticks/", headers=[("host", "evil.example")])
        plain = await asgi.request(app, "/healthz/", headers=[("host", "evil.example")])
    assert result.status == 404 and plain.status == 404
    assert "location" not in result.headers and "location" not in plain.headers
    assert json.loads(result.body)["error"]["type"] == "not_found"


@pytest.mark.parametrize("fmt", ["sse", "ndjson"])
async def test_a_finite_event_stream_the_window_could_not_finish_is_cut_without_a_hint(
    fmt: str,
) -> None:
    # A "finish" stream (a completion) that outlives the window cannot be resumed: a reconnect
    # hint and a clean close let an SDK take the part for the whole answer.
    probe = Probe()
    async with asgi.lifespan(make_app(probe, drain_window=0.2)) as app:
        target = f"/ticks?count=100&delay=0.05&format={fmt}&policy=finish"
        task = asyncio.create_task(asgi.request(app, target))
        await asyncio.sleep(0.05)
        app.state.runtime.drain.begin()
        result = await task
    assert probe.reasons == [EndReason.DRAIN]
    assert not result.completed
    assert "reconnect" not in result.text
