"""``/v1/responses``: the Response object and its typed event stream, in OpenAI's order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluice_services.mock_upstream.app import create_app
from sluice_services.mock_upstream.text import WORDS, mock_text
from tests.mock_upstream.helpers import FAST, error_of, post, sse_events
from tests.support import asgi

pytestmark = pytest.mark.anyio
PATH = "/v1/responses"
ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 5,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
USAGE_3_5 = {
    "input_tokens": 3,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 8,
}


def check_response(response: dict[str, Any], text: str) -> None:
    """A completed Response with one assistant message of ``text``."""
    assert response["id"].startswith("resp_mock_")
    assert response["object"] == "response"
    assert response["status"] == "completed"
    assert isinstance(response["created_at"], int)
    assert response["error"] is None and response["incomplete_details"] is None
    # The fields the SDK's Response model requires.
    assert response["parallel_tool_calls"] is True
    assert response["tool_choice"] == "auto"
    assert response["tools"] == []
    (message,) = response["output"]
    assert message["id"].startswith("msg_")
    assert (message["type"], message["status"], message["role"]) == (
        "message",
        "completed",
        "assistant",
    )
    assert message["content"] == [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    ]


async def test_non_streamed_is_a_completed_response_with_usage() -> None:
    body = {"model": "mock-gpt", "input": "one two three", "store": False}
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, body)
        short = await post(app, PATH, {**body, "max_output_tokens": 2, "instructions": "be brief"})
    response = json.loads(result.body)
    check_response(response, mock_text(5))
    assert response["model"] == "mock-gpt"
    assert response["usage"] == USAGE_3_5
    limited = json.loads(short.body)
    check_response(limited, mock_text(2))
    assert limited["max_output_tokens"] == 2
    assert limited["instructions"] == "be brief"
    assert limited["usage"]["input_tokens"] == 5  # the instructions count


async def test_message_items_with_text_parts_count_as_input() -> None:
    items = [
        {"role": "system", "content": "be brief"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a b c"}]},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "{}"},
    ]
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, {"model": "m", "input": items})
    assert result.status == 200, result.text
    assert json.loads(result.body)["usage"]["input_tokens"] == 5


async def test_stream_is_typed_events_in_openais_order_numbered_from_0() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(
            app, PATH, {"model": "mock-gpt", "input": "one two three", "stream": True}
        )
    assert result.headers["content-type"].startswith("text/event-stream")
    events = sse_events(result.text)
    assert [e.event for e in events] == ORDER
    datas = [e.json() for e in events]
    for n, (event, data) in enumerate(zip(events, datas, strict=True)):
        assert data["type"] == event.event
        assert data["sequence_number"] == n
        assert event.data == json.dumps(data, separators=(",", ":"))  # compact
    created, in_progress, added, part_added = datas[:4]
    for early in (created, in_progress):
        assert early["response"]["status"] == "in_progress"
        assert early["response"]["output"] == [] and early["response"]["usage"] is None
    rid = created["response"]["id"]
    item_id = added["item"]["id"]
    assert added["output_index"] == 0
    assert added["item"] == {
        "id": item_id,
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    assert part_added == {
        "type": "response.content_part.added",
        **where,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        "sequence_number": 3,
    }
    for i, delta in enumerate(datas[4:9]):
        assert delta == {
            "type": "response.output_text.delta",
            **where,
            "delta": WORDS[i],
            "logprobs": [],
            "sequence_number": 4 + i,
        }
        assert list(delta) == [
            "type",
            "item_id",
            "output_index",
            "content_index",
            "delta",
            "logprobs",
            "sequence_number",
        ]
    text_done, part_done, item_done, completed = datas[9:]
    assert text_done["text"] == mock_text(5) and text_done["item_id"] == item_id
    assert part_done["part"]["text"] == mock_text(5)
    assert item_done["item"]["status"] == "completed"
    assert item_done["item"]["content"][0]["text"] == mock_text(5)
    check_response(completed["response"], mock_text(5))
    assert completed["response"]["id"] == rid
    assert completed["response"]["usage"] == USAGE_3_5
    assert b"[DONE]" not in result.body


BAD: list[tuple[str, dict[str, Any]]] = [
    ("no input", {"model": "m"}),
    ("no model", {"input": "hi"}),
    ("input a number", {"model": "m", "input": 5}),
    ("input null", {"model": "m", "input": None}),
    ("input empty list", {"model": "m", "input": []}),
    ("input of strings", {"model": "m", "input": ["hi"]}),
    ("a message without a role", {"model": "m", "input": [{"content": "hi"}]}),
    ("a message without content", {"model": "m", "input": [{"role": "user"}]}),
    ("an unknown role", {"model": "m", "input": [{"role": "robot", "content": "hi"}]}),
    ("content a number", {"model": "m", "input": [{"role": "user", "content": 5}]}),
    (
        "a part without a type",
        {"model": "m", "input": [{"role": "user", "content": [{"text": "x"}]}]},
    ),
    (
        "a part's text a number",
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
    ),
    ("stream a string", {"model": "m", "input": "hi", "stream": "yes"}),
    ("max_output_tokens zero", {"model": "m", "input": "hi", "max_output_tokens": 0}),
    ("max_output_tokens a float", {"model": "m", "input": "hi", "max_output_tokens": 2.5}),
    ("instructions a list", {"model": "m", "input": "hi", "instructions": ["x"]}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD], ids=[name for name, _ in BAD])
async def test_a_hostile_body_is_a_422(body: dict[str, Any]) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, body)
        stats = json.loads((await asgi.request(app, "/mock/stats")).body)
    assert result.status == 422
    assert error_of(result)["type"] == "validation_error"
    assert stats["responses"] == 0


async def test_a_client_that_leaves_ends_the_stream_and_the_ledger_says_so() -> None:
    body = {"model": "mock-fault:delay=0.05,tokens=100", "input": "hi", "stream": True}
    async with asgi.lifespan(create_app(FAST)) as app:
        left = await post(app, PATH, body, headers=[("x-request-id", "resp-left")], leave_after=6)
        entry = json.loads((await asgi.request(app, "/mock/requests/resp-left")).body)
    assert not left.completed
    assert (entry["kind"], entry["end"], entry["stream"]) == (
        "responses",
        "client_disconnect",
        True,
    )
    assert 1 <= entry["tokens_sent"] < 100
