"""Each fault on each API that generates text, streamed and not: same spec, same effect."""

from __future__ import annotations

import json
import time

import pytest

from sluice_services.mock_upstream.app import create_app
from sluice_services.mock_upstream.text import WORDS_JSON, mock_text
from tests.mock_upstream.helpers import (
    FAST,
    PATHS,
    body_for,
    error_of,
    post,
    sse_events,
    stream_error,
    tokens_of,
)
from tests.support import asgi

pytestmark = pytest.mark.anyio
KINDS = list(PATHS)


async def seen(app: object, request_id: str) -> dict[str, object]:
    result = await asgi.request(app, f"/mock/requests/{request_id}")  # type: ignore[arg-type]
    entry: dict[str, object] = json.loads(result.body)
    return entry


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("kind", KINDS)
async def test_status_is_an_openai_error_before_any_byte(kind: str, stream: bool) -> None:
    rid = f"st-{kind}-{stream}"
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(
            app,
            PATHS[kind],
            body_for(kind, stream),
            fault="status=503",
            headers=[("x-request-id", rid)],
        )
        client_error = await post(app, PATHS[kind], body_for(kind, stream), fault="status=429")
        entry = await seen(app, rid)
    assert result.status == 503
    assert result.headers["content-type"] == "application/json"
    error = error_of(result)
    assert (error["type"], error["code"]) == ("server_error", "mock_503")
    assert client_error.status == 429
    assert error_of(client_error)["type"] == "invalid_request_error"
    assert (entry["end"], entry["kind"], entry["stream"]) == ("status_503", kind, stream)


@pytest.mark.parametrize("kind", KINDS)
async def test_first_token_delay_holds_back_the_body_not_the_headers(kind: str) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        started = time.monotonic()
        streamed = await post(app, PATHS[kind], body_for(kind, True), fault="first_token_delay=0.3")
        plain = await post(app, PATHS[kind], body_for(kind, False), fault="first_token_delay=0.3")
        took = time.monotonic() - started
    assert streamed.status == 200
    assert streamed.times[0] >= 0.3  # not a byte of the body before the prefill is over
    assert "".join(tokens_of(kind, streamed.text)) == mock_text(5)
    assert plain.status == 200
    assert took >= 0.6  # the non-streamed answer waited too


@pytest.mark.parametrize("kind", KINDS)
async def test_stall_is_silence_after_stall_after_tokens(kind: str) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATHS[kind], body_for(kind, True), fault="stall=0.3,stall_after=2")
        started = time.monotonic()
        plain = await post(app, PATHS[kind], body_for(kind, False), fault="stall=0.3,stall_after=2")
        plain_took = time.monotonic() - started
        started = time.monotonic()
        past = await post(app, PATHS[kind], body_for(kind, False), fault="stall=0.3,stall_after=9")
        past_took = time.monotonic() - started
    gaps = [b - a for a, b in zip(result.times, result.times[1:], strict=False)]
    stalled = [i + 1 for i, gap in enumerate(gaps) if gap >= 0.3]
    assert len(stalled) == 1
    # The silence is right before the third token: two went out before it.
    assert WORDS_JSON[2].encode() in result.chunks[stalled[0]]
    assert "".join(tokens_of(kind, result.text)) == mock_text(5)
    assert stream_error(kind, result.text) is None
    assert plain.status == 200 and plain_took >= 0.3
    assert past.status == 200 and past_took < 0.3  # 5 tokens never reach a stall at 9


@pytest.mark.parametrize("kind", KINDS)
async def test_error_after_ends_the_stream_with_the_apis_error(kind: str) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATHS[kind], body_for(kind, True), fault="error_after=2")
        plain = await post(app, PATHS[kind], body_for(kind, False), fault="error_after=2")
        late = await post(app, PATHS[kind], body_for(kind, False), fault="error_after=5")
    assert result.status == 200 and result.completed  # a clean end, after the error event
    assert tokens_of(kind, result.text) == [json.loads(w) for w in WORDS_JSON[:2]]
    error = stream_error(kind, result.text)
    assert error is not None
    assert error["code"] == "mock_mid_stream"
    assert error["message"] == "mock upstream failed mid-stream"
    if kind == "responses":
        events = sse_events(result.text)
        assert error == {
            "type": "error",
            "code": "mock_mid_stream",
            "message": "mock upstream failed mid-stream",
            "param": None,
            "sequence_number": len(events) - 1,
        }
        assert events[-2].event == "response.output_text.delta"
    else:
        assert error["type"] == "server_error"
    assert plain.status == 500
    assert error_of(plain)["code"] == "mock_mid_answer"
    assert late.status == 200  # five tokens: the failure at the sixth never comes


@pytest.mark.parametrize("kind", KINDS)
async def test_reset_after_drops_the_connection_mid_body(kind: str) -> None:
    rid = f"reset-{kind}"
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(
            app,
            PATHS[kind],
            body_for(kind, True),
            fault="reset_after=2",
            headers=[("x-request-id", rid)],
        )
        plain = await post(app, PATHS[kind], body_for(kind, False), fault="reset_after=2")
        entry = await seen(app, rid)
    assert result.status == 200
    assert not result.completed  # no end of the body: the connection is dropped
    assert tokens_of(kind, result.text) == [json.loads(w) for w in WORDS_JSON[:2]]
    assert stream_error(kind, result.text) is None  # no error event, no end event
    assert b"[DONE]" not in result.body and b"response.completed" not in result.body
    assert (entry["end"], entry["tokens_sent"]) == ("reset", 2)
    assert plain.status == 200  # not for non-streamed answers
    assert json.loads(plain.body)  # whole


@pytest.mark.parametrize("kind", KINDS)
async def test_tokens_and_delay_pace_the_answer(kind: str) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATHS[kind], body_for(kind, True), fault="tokens=7,delay=0.04")
        started = time.monotonic()
        plain = await post(app, PATHS[kind], body_for(kind, False), fault="tokens=7,delay=0.04")
        plain_took = time.monotonic() - started
        by_model = await post(
            app, PATHS[kind], body_for(kind, True, model="mock-fault:tokens=3,delay=0")
        )
    assert "".join(tokens_of(kind, result.text)) == mock_text(7)
    token_times = [
        t
        for t, chunk in zip(result.times, result.chunks, strict=True)
        if any(w.encode() in chunk for w in WORDS_JSON) and b"done" not in chunk
    ]
    assert token_times[-1] - token_times[0] >= 6 * 0.04 * 0.9
    body = json.loads(plain.body)
    if kind == "responses":
        assert body["output"][0]["content"][0]["text"] == mock_text(7)
        assert body["usage"]["output_tokens"] == 7
    else:
        assert body["usage"]["completion_tokens"] == 7
    assert plain_took >= 7 * 0.04
    assert "".join(tokens_of(kind, by_model.text)) == mock_text(3)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("kind", KINDS)
async def test_no_usage_even_when_asked(kind: str, stream: bool) -> None:
    ask = {} if kind == "responses" else {"stream_options": {"include_usage": True}}
    async with asgi.lifespan(create_app(FAST)) as app:
        without = await post(app, PATHS[kind], body_for(kind, stream, **ask), fault="no_usage=1")
        usual = await post(app, PATHS[kind], body_for(kind, stream, **ask))
    for result, has_usage in ((without, False), (usual, True)):
        assert result.status == 200
        if not stream:
            body = json.loads(result.body)
            if kind == "responses":
                assert (body["usage"] is not None) is has_usage
            else:
                assert ("usage" in body) is has_usage
            continue
        events = sse_events(result.text)
        if kind == "responses":
            completed = events[-1].json()
            assert completed["type"] == "response.completed"
            assert (completed["response"]["usage"] is not None) is has_usage
        else:
            assert events[-1].data == "[DONE]"
            assert any("usage" in e.json() for e in events[:-1]) is has_usage
        assert "".join(tokens_of(kind, result.text)) == mock_text(5)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_bad_fault_spec_is_a_400_on_every_api(kind: str) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        results = [
            await post(app, PATHS[kind], body_for(kind, True), fault=spec)
            for spec in (
                "explode=1",
                "tokens=-1",
                "delay=x",
                "status=200",
                "no_usage=2",
                "tokens=100001",
                "stall=inf",
                "delay=nan",
            )
        ]
        by_model = await post(app, PATHS[kind], body_for(kind, True, model="mock-fault:nope"))
    for result in [*results, by_model]:
        assert result.status == 400
        assert error_of(result)["code"] == "invalid_fault"
