"""``/v1/completions`` (legacy): the shapes OpenAI sends, streamed and not, and bad bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluice_services.mock_upstream.app import create_app
from sluice_services.mock_upstream.text import WORDS, mock_text
from tests.mock_upstream.helpers import FAST, error_of, post, sse_events
from tests.support import asgi

pytestmark = pytest.mark.anyio
PATH = "/v1/completions"


def compact(line: str) -> bool:
    return line == json.dumps(json.loads(line), separators=(",", ":"))


async def test_non_streamed_is_a_text_completion_with_usage() -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        one = await post(app, PATH, {"model": "mock-gpt", "prompt": "one two three"})
        many = await post(
            app, PATH, {"model": "m", "prompt": ["one two", "three"], "max_tokens": 2}
        )
    body = json.loads(one.body)
    assert body["id"].startswith("cmpl-mock-")
    assert body["object"] == "text_completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "mock-gpt"
    assert body["choices"] == [
        {"text": mock_text(5), "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    listed = json.loads(many.body)
    assert listed["choices"][0]["text"] == mock_text(2)  # max_tokens
    assert listed["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_stream_is_one_chunk_a_token_then_stop_usage_and_done() -> None:
    body = {
        "model": "mock-gpt",
        "prompt": "one two three",
        "stream": True,
        "max_tokens": 4,
        "stream_options": {"include_usage": True},
        "echo": False,  # extra fields are allowed
    }
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, body)
        no_usage = await post(app, PATH, {**body, "stream_options": None})
    assert result.headers["content-type"].startswith("text/event-stream")
    events = sse_events(result.text)
    assert all(e.event is None for e in events)
    assert events[-1].data == "[DONE]"
    assert all(compact(e.data) for e in events[:-1])
    chunks = [e.json() for e in events[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("cmpl-mock-")
    for chunk in chunks:
        assert chunk["object"] == "text_completion"
        assert chunk["model"] == "mock-gpt"
        assert list(chunk) == [
            "id",
            "object",
            "created",
            "model",
            "choices",
            *(["usage"] if not chunk["choices"] else []),
        ]
    tokens = chunks[:4]
    for i, chunk in enumerate(tokens):
        assert chunk["choices"] == [
            {"text": WORDS[i], "index": 0, "logprobs": None, "finish_reason": None}
        ]
    assert chunks[4]["choices"] == [
        {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert len(chunks) == 6
    plain = [e.json() for e in sse_events(no_usage.text)[:-1]]
    assert len(plain) == 5 and all(c["choices"] for c in plain)


BAD: list[tuple[str, dict[str, Any]]] = [
    ("no prompt", {"model": "m"}),
    ("no model", {"prompt": "hi"}),
    ("model not a string", {"model": 7, "prompt": "hi"}),
    ("prompt a number", {"model": "m", "prompt": 5}),
    ("prompt null", {"model": "m", "prompt": None}),
    ("prompt empty list", {"model": "m", "prompt": []}),
    ("prompt of numbers", {"model": "m", "prompt": [1, 2]}),
    ("prompt mixed", {"model": "m", "prompt": ["a", 1]}),
    ("stream a string", {"model": "m", "prompt": "hi", "stream": "true"}),
    ("stream a number", {"model": "m", "prompt": "hi", "stream": 1}),
    ("max_tokens zero", {"model": "m", "prompt": "hi", "max_tokens": 0}),
    ("max_tokens a string", {"model": "m", "prompt": "hi", "max_tokens": "5"}),
    ("max_tokens a float", {"model": "m", "prompt": "hi", "max_tokens": 5.5}),
    ("stream_options a list", {"model": "m", "prompt": "hi", "stream_options": [1]}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD], ids=[name for name, _ in BAD])
async def test_a_hostile_body_is_a_422_saying_which_field(body: dict[str, Any]) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, body)
        stats = json.loads((await asgi.request(app, "/mock/stats")).body)
    assert result.status == 422
    assert error_of(result)["type"] == "validation_error"
    assert stats["completions"] == 0  # never an answer


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"", 400, "empty_body"),
        (b"{", 400, "invalid_json"),
        (b'{"model":"m","prompt":"hi","x":NaN}', 400, "invalid_number"),
        (b'{"model":"m","prompt":"\xff"}', 400, "invalid_encoding"),
        (b"[]", 422, "validation_error"),  # JSON, but not the object the schema asks for
    ],
)
async def test_a_body_that_is_not_a_json_object_is_refused(
    raw: bytes, status: int, code: str
) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, raw)
    assert result.status == status
    assert error_of(result)["code"] == code
