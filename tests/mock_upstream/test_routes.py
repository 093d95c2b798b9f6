from __future__ import annotations

import json

import pytest

from sluice_services.mock_upstream.app import create_app
from sluice_services.mock_upstream.faults import FaultSpecError, parse_faults
from sluice_services.mock_upstream.routes import mock_text
from sluice_services.mock_upstream.settings import MockSettings
from tests.support import asgi

pytestmark = pytest.mark.anyio

FAST = MockSettings(dev_mock_token_delay=0, dev_mock_tokens=5)
JSON = ("content-type", "application/json")


def chat(stream: bool, model: str = "mock-gpt", **extra: object) -> bytes:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": stream,
        **extra,
    }
    return json.dumps(body).encode()


def data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


async def test_models_list() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await asgi.request(app, "/v1/models")
    assert [m["id"] for m in json.loads(result.body)["data"]] == ["mock-gpt", "mock-gpt-mini"]


async def test_non_stream_completion_is_deterministic_with_usage() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await asgi.request(
            app, "/v1/chat/completions", method="POST", headers=[JSON], body=chat(False)
        )
    body = json.loads(result.body)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == mock_text(5)
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_stream_is_openai_sse_with_usage_and_done() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await asgi.request(
            app,
            "/v1/chat/completions",
            method="POST",
            headers=[JSON],
            body=chat(True, stream_options={"include_usage": True}, max_tokens=4),
        )
    lines = data_lines(result.text)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == mock_text(4)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_faults_by_header_and_model() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        status = await asgi.request(
            app,
            "/v1/chat/completions",
            method="POST",
            headers=[JSON, ("x-mock-fault", "status=503")],
            body=chat(True),
        )
        mid = await asgi.request(
            app,
            "/v1/chat/completions",
            method="POST",
            headers=[JSON],
            body=chat(True, model="mock-fault:error_after=2"),
        )
        bad = await asgi.request(
            app,
            "/v1/chat/completions",
            method="POST",
            headers=[JSON, ("x-mock-fault", "explode=1")],
            body=chat(True),
        )
    assert status.status == 503
    assert json.loads(status.body)["error"]["type"] == "server_error"
    lines = data_lines(mid.text)
    assert "[DONE]" not in lines
    assert json.loads(lines[-1])["error"]["code"] == "mock_mid_stream"
    assert bad.status == 400
    assert "explode" in json.loads(bad.body)["error"]["message"]


async def test_ledger_records_each_request_and_how_it_ended() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        await asgi.request(
            app,
            "/v1/chat/completions",
            method="POST",
            headers=[JSON, ("x-request-id", "req-ledger-1")],
            body=chat(True, seed=7, user="u1"),
        )
        left = await asgi.request(
            app,
            "/v1/chat/completions",
            method="POST",
            headers=[JSON, ("x-request-id", "req-ledger-2")],
            body=chat(True, model="mock-fault:delay=0.05,tokens=100"),
            leave_after=3,
        )
        one = json.loads((await asgi.request(app, "/mock/requests/req-ledger-1")).body)
        two = json.loads((await asgi.request(app, "/mock/requests/req-ledger-2")).body)
        missing = await asgi.request(app, "/mock/requests/nope")
    assert not left.completed
    assert one["end"] == "completed"
    assert one["tokens_sent"] == 5
    assert one["extra_fields"] == ["seed", "user"]
    assert two["end"] == "client_disconnect"
    assert missing.status == 404


def test_fault_spec_parsing() -> None:
    assert parse_faults(None, "mock-gpt").status is None
    faults = parse_faults(None, "mock-fault:stall=2.5,stall_after=3")
    assert (faults.stall, faults.stall_after) == (2.5, 3)
    assert parse_faults("status=429", "mock-fault:status=500").status == 429
    for bad in ("status=200", "stall=-1", "stall=x", "nope", "nope=1"):
        with pytest.raises(FaultSpecError):
            parse_faults(bad, "m")


async def test_the_ledger_says_which_api_each_request_used() -> None:
    requests = [
        ("/v1/chat/completions", chat(True), "k-chat"),
        ("/v1/completions", json.dumps({"model": "m", "prompt": "hi"}).encode(), "k-cmpl"),
        ("/v1/embeddings", json.dumps({"model": "m", "input": "hi", "x": 1}).encode(), "k-emb"),
        (
            "/v1/responses",
            json.dumps({"model": "m", "input": "hi", "stream": True}).encode(),
            "k-resp",
        ),
    ]
    async with asgi.lifespan(create_app(FAST)) as app:
        before = json.loads((await asgi.request(app, "/mock/stats")).body)
        for path, body, rid in requests:
            result = await asgi.request(
                app, path, method="POST", headers=[JSON, ("x-request-id", rid)], body=body
            )
            assert result.status == 200, result.text
        seen = [
            json.loads((await asgi.request(app, f"/mock/requests/{rid}")).body)
            for _, _, rid in requests
        ]
        stats = json.loads((await asgi.request(app, "/mock/stats")).body)
    assert before == {
        "requests": 0,
        "streams": 0,
        "chat": 0,
        "completions": 0,
        "embeddings": 0,
        "responses": 0,
    }
    assert [s["kind"] for s in seen] == ["chat", "completions", "embeddings", "responses"]
    assert [s["stream"] for s in seen] == [True, False, False, True]
    assert all(s["end"] == "completed" for s in seen)
    assert seen[2]["extra_fields"] == ["x"]
    assert stats == {
        "requests": 4,
        "streams": 2,
        "chat": 1,
        "completions": 1,
        "embeddings": 1,
        "responses": 1,
        "completed": 4,
    }
