"""Stream admission: refused while draining or full (a reconnect hint to an EventSource),
and the ticket whose cap slot is given back exactly once."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import APIRouter, Request
from starlette.responses import Response

from sluice.admission import open_stream
from sluice.app import create_app
from sluice.runtime import Runtime
from sluice.settings import CoreSettings
from tests.sluice.test_streaming import Probe, make_app
from tests.support import asgi

pytestmark = pytest.mark.anyio


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


async def test_a_full_server_answers_an_event_source_with_a_reconnect_hint_not_a_503() -> None:
    # EventSource gives up for good on a 503: a full worker's refusal ended a page's stream.
    probe = Probe()
    app = make_app(probe, max_streams_per_worker=1, max_streams_per_key=10)
    async with asgi.lifespan(app):
        holder = asyncio.create_task(asgi.request(app, "/ticks?count=1000&delay=0.05"))
        await asyncio.sleep(0.1)
        sse = [("accept", "text/event-stream")]
        hinted = await asgi.request(app, "/ticks", headers=sse)
        plain = await asgi.request(app, "/ticks")
        app.state.runtime.drain.begin()
        await holder
    assert hinted.status == 200
    assert hinted.headers["content-type"].startswith("text/event-stream")
    assert hinted.text.startswith('event: reconnect\ndata: {"reason":"server_full","retry_ms":')
    retry = int(hinted.text.split("retry: ")[1].split("\n")[0])
    assert 5000 <= retry <= 10000  # a full server's Retry-After, and a random share more
    assert plain.status == 503
    error = json.loads(plain.body)["error"]
    assert error["type"] == "server_full" and plain.headers["retry-after"] == "5"


async def test_a_ticket_released_before_its_stream_starts_gives_its_slot_back_once() -> None:
    # A route that admits its stream first and then fails (an upstream that never answers)
    # releases its ticket: the slot comes back, and releasing again changes nothing.
    held: list[int] = []

    def build(runtime: Runtime[CoreSettings]) -> APIRouter:
        router = APIRouter()

        @router.get("/admit")
        async def admit(request: Request) -> Response:
            ticket = await open_stream(request)
            held.append(runtime.caps.local_total)
            ticket.release()
            ticket.release()
            return Response(status_code=502)

        return router

    settings = CoreSettings(service_name="test", max_streams_per_key=1)
    app = create_app(settings, title="t", routers=[build], public_routes=["/admit"])
    async with asgi.lifespan(app):
        codes = [(await asgi.request(app, "/admit")).status for _ in range(3)]
        caps = app.state.runtime.caps
        assert caps.local_total == 0 and dict(caps.local) == {}
    assert codes == [502, 502, 502]  # at cap 1: a slot kept would refuse the second
    assert held == [1, 1, 1]
