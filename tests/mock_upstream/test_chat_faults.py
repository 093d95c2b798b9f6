"""The chat-only faults: ``reasoning=N``, ``tool_call=N``, and their usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluice_services.mock_upstream.app import create_app
from sluice_services.mock_upstream.text import mock_reasoning, mock_text
from tests.mock_upstream.helpers import FAST, body_for, data_json, post, sse_events, stream_error
from tests.support import asgi

pytestmark = pytest.mark.anyio
PATH = "/v1/chat/completions"
WITH_USAGE = {"stream_options": {"include_usage": True}}


def deltas(text: str) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in data_json(text) if c.get("choices")]


def arguments(found: list[dict[str, Any]]) -> str:
    return "".join(call["function"]["arguments"] for d in found for call in d.get("tool_calls", []))


async def test_reasoning_deltas_come_before_the_content_and_count_as_completion() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, body_for("chat", True, **WITH_USAGE), fault="reasoning=3")
        plain = await post(app, PATH, body_for("chat", False), fault="reasoning=3")
    found = deltas(result.text)
    assert found[0] == {"role": "assistant", "content": ""}
    assert [list(d) for d in found[1:4]] == [["reasoning_content"]] * 3
    assert "".join(d["reasoning_content"] for d in found[1:4]) == mock_reasoning(3)
    assert [list(d) for d in found[4:9]] == [["content"]] * 5
    assert "".join(d["content"] for d in found[4:9]) == mock_text(5)
    assert found[9] == {}
    chunks = data_json(result.text)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 8,
        "total_tokens": 11,
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    message = json.loads(plain.body)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": mock_text(5),
        "reasoning_content": mock_reasoning(3),
    }
    assert json.loads(plain.body)["usage"]["completion_tokens"] == 8


async def test_a_tool_call_streams_its_arguments_in_n_deltas() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, body_for("chat", True, **WITH_USAGE), fault="tool_call=4")
        one = await post(app, PATH, body_for("chat", True), fault="tool_call=1")
    found = deltas(result.text)
    calls = [d for d in found if "tool_calls" in d]
    assert len(calls) == 4
    assert not any(d.get("content") for d in found)
    first = calls[0]["tool_calls"][0]
    assert first["index"] == 0
    assert first["id"].startswith("call_mock_")
    assert first["type"] == "function"
    assert first["function"]["name"] == "mock_lookup"
    for later in calls[1:]:  # only the arguments: the call was named in the first
        (call,) = later["tool_calls"]
        assert list(later) == ["tool_calls"] and call["index"] == 0
        assert list(call) == ["index", "function"] and list(call["function"]) == ["arguments"]
    assert json.loads(arguments(found)) == {"query": mock_text(4)}
    chunks = data_json(result.text)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert sse_events(result.text)[-1].data == "[DONE]"
    assert json.loads(arguments(deltas(one.text))) == {"query": mock_text(1)}


async def test_the_tool_is_the_first_one_offered_and_limits_do_not_cut_it() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    body = body_for("chat", False, tools=tools, max_tokens=1)
    async with asgi.lifespan(create_app(FAST)) as app:
        plain = await post(app, PATH, body, fault="tool_call=3,reasoning=2")
        streamed = await post(app, PATH, {**body, "stream": True}, fault="tool_call=3")
        odd = await post(app, PATH, {**body, "tools": [{"function": 5}]}, fault="tool_call=2")
    answer = json.loads(plain.body)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_mock_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"query": mock_text(3)}
    assert choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"] == mock_reasoning(2)
    assert answer["usage"]["completion_tokens"] == 5
    assert answer["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    streamed_calls = [d for d in deltas(streamed.text) if "tool_calls" in d]
    assert streamed_calls[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert len(streamed_calls) == 3
    odd_call = json.loads(odd.body)["choices"][0]["message"]["tool_calls"][0]
    assert odd_call["function"]["name"] == "mock_lookup"  # a tools list it cannot read


async def test_faults_count_reasoning_and_tool_deltas_as_tokens() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        failed = await post(app, PATH, body_for("chat", True), fault="reasoning=3,error_after=2")
        cut = await post(
            app,
            PATH,
            body_for("chat", True),
            fault="reasoning=1,tool_call=3,reset_after=2",
            headers=[("x-request-id", "tool-reset")],
        )
        entry = json.loads((await asgi.request(app, "/mock/requests/tool-reset")).body)
    found = deltas(failed.text)
    # The role delta, two reasoning deltas, then the failure where the third would be.
    assert [list(d) for d in found] == [
        ["role", "content"],
        ["reasoning_content"],
        ["reasoning_content"],
    ]
    error = stream_error("chat", failed.text)
    assert error is not None and error["code"] == "mock_mid_stream"
    assert not cut.completed
    assert (entry["end"], entry["tokens_sent"]) == ("reset", 2)
    assert len([d for d in deltas(cut.text) if "tool_calls" in d]) == 1


async def test_no_usage_leaves_out_a_tool_calls_usage_too() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(
            app, PATH, body_for("chat", True, **WITH_USAGE), fault="tool_call=2,no_usage=1"
        )
    chunks = data_json(result.text)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert sse_events(result.text)[-1].data == "[DONE]"
