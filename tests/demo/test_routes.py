from __future__ import annotations

import json

import pytest

from sluice_services.demo.app import create_app
from sluice_services.demo.routes import TOY_MESSAGES
from sluice_services.demo.settings import DemoSettings
from tests.support import asgi

pytestmark = pytest.mark.anyio

FAST = DemoSettings(
    dev_demo_toy_delay=0.05, dev_demo_counter_delay=0.02, dev_demo_events_interval=0.02
)


async def test_toy_stream_sends_the_five_seed_messages_apart() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await asgi.request(app, "/toy-stream")
    assert result.status == 200
    assert result.headers["content-type"] == "text/plain; charset=utf-8"
    assert [c.decode() for c in result.chunks] == list(TOY_MESSAGES)
    gaps = [b - a for a, b in zip(result.times, result.times[1:], strict=False)]
    assert all(g >= 0.045 for g in gaps), gaps


async def test_dummy_counter_counts_to_ten() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await asgi.request(app, "/dummy-counter")
    assert result.headers["content-type"].startswith("text/plain")
    assert result.text == "".join(f"Count: {i}\n" for i in range(1, 11))


async def test_dummy_events_is_endless_sse_until_the_client_leaves() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await asgi.request(app, "/dummy-events", leave_after=6)
    assert result.headers["content-type"].startswith("text/event-stream")
    frames = [c.decode() for c in result.chunks if not c.startswith(b":")]
    assert len(frames) == 6
    for frame in frames:
        event_line, data_line, blank = frame.split("\n", 2)
        assert event_line.split(": ")[1] in {"update", "alert", "info"}
        payload = json.loads(data_line.removeprefix("data: "))
        assert set(payload) == {"time", "value"} and 1 <= payload["value"] <= 100
        assert blank == "\n"
    assert not result.completed


async def test_demo_endpoints_are_public_and_documented() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        schema = await asgi.request(app, "/openapi.json")
    paths = json.loads(schema.body)["paths"]
    assert {"/toy-stream", "/dummy-counter", "/dummy-events"} <= set(paths)
