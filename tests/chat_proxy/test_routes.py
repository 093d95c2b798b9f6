"""chat-proxy through its ASGI app, against a real mock upstream process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from sluice_services.chat_proxy.app import create_app
from sluice_services.chat_proxy.metrics import TOKENS, UPSTREAM_ERRORS
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.mock_upstream.routes import mock_text
from tests.chat_proxy.conftest import CALLER_KEY, UPSTREAM_KEY, UPSTREAM_KEY_ID
from tests.support import asgi
from tests.support.metrics import counted
from tests.support.procs import Proc, free_port

pytestmark = pytest.mark.anyio

AUTH = ("authorization", f"Bearer {CALLER_KEY}")
JSON = ("content-type", "application/json")
# The one upstream client (chat_proxy/http1.py); aiohttp and httpx were removed (issue 13).
CLIENTS = ["native"]


def settings(mock: Proc, **overrides: Any) -> ChatSettings:
    values: dict[str, Any] = {
        "api_keys": SecretStr(CALLER_KEY),
        "upstream_base_url": f"{mock.url}/v1",
        "upstream_api_key": SecretStr(UPSTREAM_KEY),
        "upstream_read_timeout": 1.0,
        **overrides,
    }
    return ChatSettings(**values)


def body(stream: bool = True, model: str = "mock-gpt", **extra: Any) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello there"}],
            "stream": stream,
            **extra,
        }
    ).encode()


async def post(app: Any, payload: bytes, rid: str | None = None, **kw: Any) -> asgi.Result:
    headers = [AUTH, JSON] + ([("x-request-id", rid)] if rid else [])
    return await asgi.request(
        app, "/v1/chat/completions", method="POST", headers=headers, body=payload, **kw
    )


async def seen_by(mock: Proc, request_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{mock.url}/mock/requests/{request_id}")
    result: dict[str, Any] = response.json()
    return result


def data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def errors(kind: str) -> float:
    return counted(UPSTREAM_ERRORS.labels("chat-proxy", "default", kind))


async def test_stream_passes_through_and_upstream_sees_its_own_key(mock_upstream: Proc) -> None:
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await post(app, body(), rid="chat-pass-1")
    assert result.status == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    lines = data_lines(result.text)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all(c["choices"] for c in chunks)  # usage chunk dropped: the client did not ask
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == mock_text(20)
    seen = await seen_by(mock_upstream, "chat-pass-1")
    assert seen["key_id"] == UPSTREAM_KEY_ID  # the upstream key, never the caller's
    assert seen["end"] == "completed"


@pytest.mark.parametrize("client", CLIENTS)
async def test_regression_each_stream_opened_a_new_upstream_connection(
    mock_upstream: Proc, client: str
) -> None:
    # The relay stopped at [DONE] and closed the response before the body's terminator,
    # which dropped the connection: every stream paid for a new TCP connection upstream.
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        for n in range(3):
            result = await post(app, body(), rid=f"chat-reuse-{client}-{n}")
            assert data_lines(result.text)[-1] == "[DONE]"
        seed = await asgi.request(
            app,
            "/chat-stream?prompt=hi",
            headers=[AUTH, ("x-request-id", f"chat-reuse-{client}-3")],
        )
        assert seed.status == 200
    peers = {(await seen_by(mock_upstream, f"chat-reuse-{client}-{n}"))["peer"] for n in range(4)}
    assert len(peers) == 1, peers


async def test_usage_is_forwarded_when_asked(mock_upstream: Proc) -> None:
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await post(app, body(stream_options={"include_usage": True}))
    chunks = [json.loads(line) for line in data_lines(result.text)[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 20


async def test_non_stream_and_unknown_fields_pass_through(mock_upstream: Proc) -> None:
    before = counted(TOKENS.labels("chat-proxy", "mock-gpt", "completion"))
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await post(app, body(stream=False, seed=42, logit_bias={}), rid="chat-extra-1")
    assert json.loads(result.body)["choices"][0]["message"]["content"] == mock_text(20)
    seen = await seen_by(mock_upstream, "chat-extra-1")
    assert seen["extra_fields"] == ["logit_bias", "seed"]
    after = counted(TOKENS.labels("chat-proxy", "mock-gpt", "completion"))
    assert after - before == 20


async def test_models_and_unknown_model_label(mock_upstream: Proc) -> None:
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        models = await asgi.request(app, "/v1/models", headers=[AUTH])
        proxy_models = app.state.runtime.resources[0].__self__.models
    assert [m["id"] for m in json.loads(models.body)["data"]] == ["mock-gpt", "mock-gpt-mini"]
    assert proxy_models.label("mock-gpt-mini") == "mock-gpt-mini"
    assert proxy_models.label("attacker-chosen-9f8e7d") == "other"


def known(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user"}], **fields}).encode()


def deep(depth: int) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user"}], "x": ' + (
        b"[" * depth + b"]" * depth + b"}"
    )


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[]", 400, None),
        (b'"a string"', 400, None),
        (b"null", 400, None),
        (b"", 400, None),
        # Regression: 100k levels raised RecursionError, which escaped `except ValueError`: 500.
        (b"[" * 100_000 + b"]" * 100_000, 400, None),
        (deep(100_000), 400, None),
        (deep(500), 400, None),  # parses, but deeper than the bound
        (b'{"model": "m", "messages": [{"role": "user", "content": "\xff"}]}', 400, None),
        # Regression: NaN and 1e309 (float inf) were forwarded upstream as non-JSON NaN/Infinity.
        (known(temperature=float("nan")), 400, None),
        (known(extra={"deep": [1, {"x": float("nan")}]}), 400, None),
        (known(extra=float("inf")), 400, None),
        (known(extra=float("-inf")), 400, None),
        (b'{"model": "m", "messages": [{"role": "user"}], "extra": 1e309}', 400, None),
        # Regression: lax types took "yes" and 1 for true, "5" for 5.
        (known(stream="yes"), 400, "stream"),
        (known(stream=1), 400, "stream"),
        (known(stream="true"), 400, "stream"),
        (known(max_tokens="5"), 400, "max_tokens"),
        (known(max_tokens=True), 400, "max_tokens"),
        (known(max_tokens=5.5), 400, "max_tokens"),
        (known(n="1"), 400, "n"),
        (known(temperature="1"), 400, "temperature"),
        (known(temperature=True), 400, "temperature"),
        (known(stream_options={"include_usage": 1}), 400, "stream_options.include_usage"),
        (known(logprobs="false"), 400, "logprobs"),
        (known(seed="42"), 400, "seed"),
        (known(model=5), 400, "model"),
        (json.dumps({"model": "m"}).encode(), 400, "messages"),
        (json.dumps({"model": "m", "messages": []}).encode(), 400, "messages"),
        (
            json.dumps({"model": "m", "messages": [{"role": "robot", "content": "x"}]}).encode(),
            400,
            "messages.0.role",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "user"}], "temperature": 3}).encode(),
            400,
            "temperature",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}).encode(),
            400,
            "max_tokens",
        ),
    ],
)
async def test_bad_bodies_get_openai_shaped_400(
    mock_upstream: Proc, payload: bytes, status: int, param: str | None
) -> None:
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await post(app, payload)
    error = json.loads(result.body)["error"]
    assert result.status == status
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_plain_json_next_to_the_hostile_bodies_is_forwarded(mock_upstream: Proc) -> None:
    # Duplicate keys (the last wins), the largest finite numbers, nesting at the bound in a
    # field the proxy does not know, integers where OpenAI says number: all pass through.
    payload = (
        b'{"model": "nope", "model": "mock-gpt", "stream": false, "temperature": 1,'
        b' "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}],'
        b' "big": 1e308, "huge": ' + b"9" * 400 + b', "nested": ' + b"[" * 63 + b"]" * 63 + b"}"
    )
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await post(app, payload, rid="chat-plain-1")
    assert result.status == 200, result.body
    assert json.loads(result.body)["choices"][0]["message"]["content"] == mock_text(3)
    seen = await seen_by(mock_upstream, "chat-plain-1")
    assert seen["model"] == "mock-gpt"
    assert seen["extra_fields"] == ["big", "huge", "nested", "temperature"]


async def test_body_size_limit_is_413(mock_upstream: Proc) -> None:
    async with asgi.lifespan(create_app(settings(mock_upstream, chat_max_body_bytes=2048))) as app:
        big = body(stream=False, padding="x" * 5000)
        result = await post(app, big)
    assert result.status == 413
    assert json.loads(result.body)["error"]["code"] == "body_too_large"


async def test_needs_a_key_and_seed_route_is_public(mock_upstream: Proc) -> None:
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        refused = await asgi.request(
            app, "/v1/chat/completions", method="POST", headers=[JSON], body=body()
        )
        seed = await asgi.request(app, "/chat-stream?prompt=Tell+a+story")
    assert refused.status == 401
    assert seed.status == 200
    assert seed.headers["content-type"].startswith("text/plain")
    assert seed.text == mock_text(20) + "\n"  # regression: it ended without a newline


async def test_chat_stream_sse_variant_for_browsers(mock_upstream: Proc) -> None:
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await asgi.request(
            app, "/chat-stream?prompt=hi", headers=[("accept", "text/event-stream")]
        )
    frames = sse_frames(result.text)
    deltas = [json.loads(f["data"])["delta"] for f in frames if "event" not in f]
    assert "".join(deltas) == mock_text(20)
    assert frames[-1]["event"] == "done"
    assert json.loads(frames[-1]["data"])["finish_reason"] == "stop"


def sse_frames(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name and not name.startswith(":"):
                fields[name] = value
        if fields:
            frames.append(fields)
    return frames


async def test_chat_stream_events_have_ids_and_a_reconnect_gets_204(mock_upstream: Proc) -> None:
    # Regression: EventSource reconnected 3 s after `done`, and each reconnect was a new
    # completion. Every event has an id, so a reconnect carries Last-Event-ID: 204 ends it.
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        first = await asgi.request(
            app, "/chat-stream?prompt=hi&format=sse", headers=[("x-request-id", "cs-ids-1")]
        )
        frames = sse_frames(first.text)
        reconnects = [
            await asgi.request(
                app,
                f"/chat-stream?prompt=hi{fmt}",
                headers=[("last-event-id", last), ("x-request-id", f"cs-re-{n}")],
            )
            for n, (fmt, last) in enumerate(
                [("&format=sse", frames[-1]["id"]), ("&format=sse", "3"), ("", "x")]
            )
        ]
    assert first.status == 200
    assert [f["id"] for f in frames] == [str(n) for n in range(1, 22)]  # 20 deltas, then done
    assert frames[-1]["event"] == "done"
    for reconnect in reconnects:
        assert reconnect.status == 204
        assert reconnect.body == b""
    assert (await seen_by(mock_upstream, "cs-ids-1"))["end"] == "completed"
    for n in range(3):  # a reconnect never reaches the model
        assert (await seen_by(mock_upstream, f"cs-re-{n}"))["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("fault", "code"), [("error_after=3", "mock_mid_stream"), ("reset_after=3", "upstream_reset")]
)
async def test_chat_stream_failure_is_a_failed_event_and_a_line_of_its_own(
    mock_upstream: Proc, fault: str, code: str
) -> None:
    target = f"/chat-stream?prompt=hi&model=mock-fault:{fault}"
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        text = await asgi.request(app, target)
        sse = await asgi.request(app, target + "&format=sse")
        ndjson = await asgi.request(app, target + "&format=ndjson")
    # Regression: the text form glued the error onto the answer, with no newline at the end.
    assert text.text.startswith(mock_text(3) + "\n[error: ")
    assert text.text.endswith("]\n")
    # Regression: the SSE event was named `error`, as EventSource's own event at every close.
    frames = sse_frames(sse.text)
    assert [f.get("event") for f in frames] == [None, None, None, "failed"]
    assert [f["id"] for f in frames] == ["1", "2", "3", "4"]
    error = json.loads(frames[-1]["data"])["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["code"] == code
    assert text.text == f"{mock_text(3)}\n[error: {error['message']}]\n"
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert lines[-1] == {"id": "4", "event": "failed", "data": {"error": error}}


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        ("status=400", 400, "status"),
        ("status=401", 502, "status"),
        ("status=429", 429, "status"),
        ("status=500", 502, "status"),
        ("status=503", 502, "status"),
        ("first_token_delay=3", 504, "timeout"),
    ],
)
@pytest.mark.parametrize("client", CLIENTS)
async def test_failures_before_the_first_byte_are_json(
    mock_upstream: Proc, fault: str, status: int, kind: str, client: str
) -> None:
    before = errors(kind)
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await post(app, body(model=f"mock-fault:{fault}"))
    assert result.status == status
    error = json.loads(result.body)["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert errors(kind) == before + 1
    assert app.state.runtime.caps.local_total == 0  # the slot went back


@pytest.mark.parametrize("client", CLIENTS)
async def test_upstream_down_is_502_connect(mock_upstream: Proc, client: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    before = errors("connect")
    config = settings(mock_upstream, upstream_base_url=closed)
    async with asgi.lifespan(create_app(config)) as app:
        result = await post(app, body())
    assert result.status == 502
    assert json.loads(result.body)["error"]["code"] == "upstream_connect"
    assert errors("connect") == before + 1


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        ("error_after=3", "error_event", "mock_mid_stream"),
        ("reset_after=3", "reset", "upstream_reset"),
        ("stall=3,stall_after=3", "timeout", "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("client", CLIENTS)
async def test_failures_after_the_first_byte_end_with_an_error_event(
    mock_upstream: Proc, fault: str, kind: str, code: str, client: str
) -> None:
    before = errors(kind)
    started = time.monotonic()
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        result = await post(app, body(model=f"mock-fault:{fault}"))
    assert time.monotonic() - started < 2.5  # a stall ends at the read timeout (1 s)
    assert result.status == 200
    lines = data_lines(result.text)
    assert "[DONE]" not in lines
    assert json.loads(lines[-1])["error"]["code"] == code
    content = [json.loads(x)["choices"][0]["delta"].get("content") for x in lines[:-1]]
    assert "".join(c or "" for c in content) == mock_text(3)
    assert result.completed  # a clean end of the response, no [DONE]
    assert errors(kind) == before + 1


async def test_token_budget_per_key(mock_upstream: Proc) -> None:
    # Each completion: 2 prompt + 20 completion tokens.
    async with asgi.lifespan(
        create_app(settings(mock_upstream, chat_token_limit="50/hour", service_name="chat-tokens"))
    ) as app:
        codes = [(await post(app, body(stream=s))).status for s in (True, False, True)]
        refused = await post(app, body())
    assert codes == [200, 200, 200]
    assert refused.status == 429
    error = json.loads(refused.body)["error"]
    assert error["type"] == "tokens_exceeded"
    assert int(refused.headers["retry-after"]) >= 1


async def test_request_rate_limit(mock_upstream: Proc) -> None:
    async with asgi.lifespan(
        create_app(settings(mock_upstream, rate_limit="2/minute", service_name="chat-rate"))
    ) as app:
        codes = [(await post(app, body(stream=False))).status for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_a_drained_event_source_still_gets_its_answer(mock_upstream: Proc) -> None:
    # Only a client that got an event of an answer sends Last-Event-ID: a draining worker's
    # answer to an EventSource (the reconnect hint) has no id, so its reconnect, elsewhere,
    # runs the prompt rather than getting 204.
    target = "/chat-stream?prompt=hi&format=sse"
    sse = [("accept", "text/event-stream")]
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        app.state.runtime.drain.begin()
        hinted = await asgi.request(app, target, headers=sse)
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        answered = await asgi.request(app, target, headers=sse)
    assert hinted.status == 200
    assert [f.get("event") for f in sse_frames(hinted.text)] == ["reconnect"]
    assert "id" not in sse_frames(hinted.text)[0]
    assert answered.status == 200
    assert sse_frames(answered.text)[-1]["event"] == "done"


async def ended_upstream(mock: Proc, request_id: str) -> dict[str, Any]:
    """The mock upstream's record of a request, once it has ended (2 s at most)."""
    deadline = time.monotonic() + 2
    while True:
        seen = await seen_by(mock, request_id)
        if seen.get("end") is not None or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/chat-stream", "non-streamed"])
async def test_regression_a_client_that_left_before_the_first_token_held_the_upstream(
    mock_upstream: Proc, route: str
) -> None:
    # Nothing listened for the client before the first upstream byte: the upstream request
    # (and the cap slot) were held until the first token came, up to the read timeout.
    model = "mock-fault:first_token_delay=3"
    rid = f"left-{route.strip('/').replace('/', '-')}-{time.time_ns()}"
    async with asgi.lifespan(create_app(settings(mock_upstream, upstream_read_timeout=10))) as app:
        started = time.time()
        if route == "/chat-stream":
            target = f"/chat-stream?prompt=hi&model={model}"
            headers = [("x-request-id", rid)]
            result = await asgi.request(app, target, headers=headers, leave_at=0.3, timeout=5)
        elif route == "non-streamed":  # no slot, but the upstream request is cancelled too
            answer = body(model=model, stream=False)
            result = await post(app, answer, rid, leave_at=0.3, timeout=5)
        else:
            result = await post(app, body(model=model), rid, leave_at=0.3, timeout=5)
        returned = time.time()
        assert app.state.runtime.caps.local_total == 0  # the slot went back
    left = started + 0.3
    assert returned - left < 0.1, returned - left
    assert result.status == 499  # (to nobody: for the access log)
    if route == "non-streamed":
        return  # the mock records how streams end; the proxy did not wait out the answer
    seen = await ended_upstream(mock_upstream, rid)
    assert seen["end"] == "client_disconnect", seen
    assert seen["ended_at"] - left < 0.1, seen["ended_at"] - left
    assert seen["tokens_sent"] == 0


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/chat-stream"])
async def test_a_client_that_waits_out_a_long_first_token_gets_its_answer(
    mock_upstream: Proc, route: str
) -> None:
    model = "mock-fault:first_token_delay=0.5,tokens=3"
    async with asgi.lifespan(create_app(settings(mock_upstream))) as app:
        if route == "/chat-stream":
            result = await asgi.request(app, f"/chat-stream?prompt=hi&model={model}")
            assert result.status == 200 and result.text == mock_text(3) + "\n"
        else:
            result = await post(app, body(model=model))
            assert result.status == 200 and data_lines(result.text)[-1] == "[DONE]"
        assert app.state.runtime.caps.local_total == 0
