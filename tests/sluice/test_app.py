"""The core's app factory: what every service gets at startup."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter
from starlette.types import Message, Scope

from sluice.app import GC_THRESHOLD, create_app
from sluice.runtime import Runtime
from sluice.settings import CoreSettings
from tests.support import asgi, logs

pytestmark = pytest.mark.anyio


@pytest.fixture
def gc_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("gc_state")
async def test_startup_freezes_what_it_built_and_raises_the_young_gc_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    app = create_app(CoreSettings(), title="gc")
    async with asgi.lifespan(app):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)


async def test_regression_an_unhandled_error_was_logged_as_status_0_without_its_request_id() -> (
    None
):
    # The 500 comes from Starlette's outermost middleware, outside the request middleware:
    # the access log said status 0 (and so did the request metric's label), and neither
    # the 500 nor its error log line carried the request id.
    def build(runtime: Runtime[CoreSettings]) -> APIRouter:
        router = APIRouter()

        @router.get("/boom")
        async def boom() -> None:
            raise RuntimeError("a bug")

        return router

    app = create_app(CoreSettings(public_routes="/boom"), title="boom", routers=[build])
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/boom",
        "raw_path": b"/boom",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"x-request-id", b"boom-1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    with logs.captured("sluice.access", "sluice.errors") as records:
        async with asgi.lifespan(app):
            with pytest.raises(RuntimeError):
                await app(scope, receive, send)
    assert messages[0]["status"] == 500
    assert (b"x-request-id", b"boom-1") in messages[0]["headers"]
    (access,) = [r for r in records if r.name == "sluice.access"]
    assert access.status == 500  # type: ignore[attr-defined]
    (error,) = [r for r in records if r.name == "sluice.errors"]
    assert error.request_id == "boom-1"  # type: ignore[attr-defined]


async def test_responses_close_their_connection_while_draining() -> None:
    # Left open, the proxy in front reuses the connection while the worker closes it
    # (nginx then answers 502 to a POST, which it may not retry).
    async with asgi.lifespan(create_app(CoreSettings(drain_window=0), title="d")) as app:
        before = await asgi.request(app, "/healthz")
        app.state.runtime.drain.begin()
        during = await asgi.request(app, "/healthz")
    assert "connection" not in before.headers
    assert during.status == 200
    assert during.headers["connection"] == "close"


async def test_a_worker_says_it_is_ready_once_started(tmp_path: Path) -> None:
    settings = CoreSettings(worker_state_dir=tmp_path)
    app = create_app(settings, title="ready")
    mine = tmp_path / str(os.getpid())
    assert not mine.exists()  # booting
    async with asgi.lifespan(app):
        assert mine.read_text() == "ready"
