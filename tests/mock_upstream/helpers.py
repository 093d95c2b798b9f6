"""Driving the mock upstream in-process: one POST, and its SSE stream as events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from sluice_services.mock_upstream.settings import MockSettings
from tests.support import asgi

FAST = MockSettings(dev_mock_token_delay=0, dev_mock_tokens=5)
JSON = ("content-type", "application/json")


async def post(
    app: FastAPI,
    path: str,
    body: dict[str, Any] | bytes,
    *,
    fault: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    **options: Any,
) -> asgi.Result:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = [JSON, *headers]
    if fault is not None:
        sent.append(("x-mock-fault", fault))
    return await asgi.request(app, path, method="POST", headers=sent, body=raw, **options)


@dataclass
class SseEvent:
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def sse_events(text: str) -> list[SseEvent]:
    """The events of an SSE body (comments skipped); fails on a line that is not a field."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, sep, value = line.partition(": ")
            assert sep, f"not an SSE field: {line!r}"
            if field == "event":
                name = value
            else:
                assert field == "data", line
                data.append(value)
        if data:
            events.append(SseEvent(name, "\n".join(data)))
    assert text.endswith("\n\n") or not text, "the stream ends mid-event"
    return events


def data_json(text: str) -> list[Any]:
    """The JSON of every ``data:`` event but ``[DONE]`` (the chat/completions streams)."""
    return [e.json() for e in sse_events(text) if e.data != "[DONE]"]


def error_of(result: asgi.Result) -> dict[str, Any]:
    """An OpenAI-shaped error body's ``error`` object (asserting the shape)."""
    body = json.loads(result.body)
    assert set(body) >= {"error"}, body
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    return error


# The three APIs that generate text, by ledger kind.
PATHS = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "responses": "/v1/responses",
}


def body_for(kind: str, stream: bool, **extra: Any) -> dict[str, Any]:
    """A valid request of ``kind`` whose prompt is three words."""
    body: dict[str, Any] = {"model": "mock-gpt", "stream": stream}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": "one two three"}]
    elif kind == "completions":
        body["prompt"] = "one two three"
    else:
        body["input"] = "one two three"
    return {**body, **extra}


def tokens_of(kind: str, text: str) -> list[str]:
    """The text deltas of a ``kind`` stream, in order."""
    if kind == "responses":
        events = sse_events(text)
        return [e.json()["delta"] for e in events if e.event == "response.output_text.delta"]
    tokens = []
    for chunk in data_json(text):
        if "error" in chunk or not chunk["choices"]:
            continue
        choice = chunk["choices"][0]
        if kind == "completions" and choice["finish_reason"] is None:
            tokens.append(choice["text"])
        elif kind == "chat" and "content" in choice["delta"] and "role" not in choice["delta"]:
            tokens.append(choice["delta"]["content"])
    return tokens


def answer_text(kind: str, body: dict[str, Any]) -> str:
    """The text of a non-streamed ``kind`` answer."""
    if kind == "chat":
        text: str = body["choices"][0]["message"]["content"]
    elif kind == "completions":
        text = body["choices"][0]["text"]
    else:
        text = body["output"][0]["content"][0]["text"]
    return text


def stream_error(kind: str, text: str) -> dict[str, Any] | None:
    """The error a ``kind`` stream ended with (its API's own shape), or None."""
    events = sse_events(text)
    if kind == "responses":
        if events[-1].event != "error":
            return None
        error: dict[str, Any] = events[-1].json()
        return error
    assert all(e.event is None for e in events)
    last = events[-1]
    if last.data == "[DONE]":
        return None
    assert all(e.data != "[DONE]" for e in events)
    found: dict[str, Any] | None = last.json().get("error")  # None: a cut stream
    return found
