"""The relay of a streamed completion, fed upstream bodies cut at every kind of boundary."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from sluice.events import Event
from sluice.formats import StreamFormat, encode
from sluice.runtime import Runtime
from sluice.streaming import StreamError
from sluice_services.chat_proxy.proxy import ChatProxy
from sluice_services.chat_proxy.relay import Relay
from sluice_services.chat_proxy.settings import ChatSettings

pytestmark = pytest.mark.anyio


def upstream_body(tokens: list[str], usage: bool) -> bytes:
    def event(payload: object) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [event(chunk({"role": "assistant", "content": ""})), b": keep-alive\n\n"]
    events += [event(chunk({"content": t})) for t in tokens]
    events.append(event(chunk({}, "stop")))
    if usage:
        total = {"prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3}
        events.append(event({"id": "c", "choices": [], "usage": total}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


class _Response:
    status = 200

    def header(self, name: str) -> str | None:
        return None

    async def read(self, limit: int | None = None) -> bytes:
        return b""

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


async def run_relay(pieces: list[bytes], wants_usage: bool) -> tuple[bytes, Relay]:
    settings = ChatSettings(api_keys=SecretStr("sk-relay-test-000000000000000000"))
    proxy = ChatProxy(Runtime.create(settings))
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    relay = Relay(proxy, request, "mock-gpt", client_wants_usage=wants_usage)

    async def rest() -> AsyncIterator[bytes]:
        for piece in pieces[1:]:
            yield piece

    out = [part async for part in relay.passthrough(pieces[0], rest(), _Response())]
    return b"".join(out), relay


def cuts(body: bytes, how: str, rng: random.Random) -> list[bytes]:
    if how == "whole":
        return [body]
    if how == "events":  # one event a chunk, as servers write them
        return [e + b"\n\n" for e in body.split(b"\n\n") if e]
    points = sorted(rng.sample(range(1, len(body)), 12))
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@pytest.mark.parametrize("how", ["events", "whole", "random"])
@pytest.mark.parametrize("wants_usage", [True, False])
async def test_every_cut_relays_the_same_bytes_and_counts_the_same(
    how: str, wants_usage: bool
) -> None:
    tokens = ["Hello", ",", " world", "", ' "quoted"', " \u00e9t\u00e9"]
    body = upstream_body(tokens, usage=True)
    rng = random.Random(7)
    for _ in range(20 if how == "random" else 1):
        out, relay = await run_relay(cuts(body, how, rng), wants_usage)
        expected = body if wants_usage else body.replace(usage_event(body), b"")
        assert out == expected
        assert relay.completion == 5  # the empty delta is not a token
        assert relay.usage == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 3}
        assert relay.ended and not relay.upstream_failed


def usage_event(body: bytes) -> bytes:
    return next(e + b"\n\n" for e in body.split(b"\n\n") if b'"usage"' in e)


async def run_deltas(body: bytes) -> tuple[list[Event], StreamError | None]:
    """What /chat-stream makes of an upstream body: its events, and how it failed."""
    settings = ChatSettings(api_keys=SecretStr("sk-relay-test-000000000000000000"))
    proxy = ChatProxy(Runtime.create(settings))
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    relay = Relay(proxy, request, "mock-gpt", client_wants_usage=False)

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    events: list[Event] = []
    try:
        async for event in relay.deltas(body, nothing(), _Response()):
            events.append(event)
    except StreamError as exc:
        return events, exc
    return events, None


def text_of(events: list[Event], failure: StreamError | None) -> bytes:
    last = [failure.last] if failure is not None and isinstance(failure.last, Event) else []
    return b"".join(encode(e, StreamFormat.TEXT) for e in [*events, *last])


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        (["Hello", " world"], "Hello world\n"),  # regression: no newline at the end
        (["Hello", " world\n"], "Hello world\n"),  # one is enough
        ([], ""),  # nothing said: nothing to end
    ],
)
async def test_chat_stream_text_ends_with_one_newline(tokens: list[str], text: str) -> None:
    events, failure = await run_deltas(upstream_body(tokens, usage=True))
    assert failure is None
    assert text_of(events, None).decode() == text
    assert [e.id for e in events] == [str(n) for n in range(1, len(tokens) + 2)]
    assert events[-1].event == "done"
    assert events[-1].data["usage"]["completion_tokens"] == len(tokens)


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def delta(text: object) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": text}}]})


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        # Regression: json.loads raised out of the relay, and the core sent its generic
        # `event: error` (the name EventSource uses for its own closes).
        (b"data: {not json\n\n", "upstream_error_event"),
        (b"data: " + b"[" * 100_000 + b"\n\n", "upstream_error_event"),
        (event([1, 2]), "upstream_error_event"),
        (event({"error": "overloaded"}), "upstream_error_event"),
        (event({"error": {"message": "overloaded", "code": "busy"}}), "busy"),
        (event({"error": {"message": "two\nlines", "code": "x"}}), "x"),
    ],
)
async def test_a_bad_upstream_event_ends_chat_stream_with_a_failed_event(
    bad: bytes, code: str
) -> None:
    events, failure = await run_deltas(delta("Hi") + bad + delta(" there") + b"data: [DONE]\n\n")
    assert failure is not None
    last = failure.last
    assert isinstance(last, Event)
    assert (last.event, last.id) == ("failed", "2")
    error = last.data["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert {"type", "param"} <= set(error)
    one_line = error["message"].replace("\n", " ")  # the text form's error is one line
    assert text_of(events, failure).decode() == f"Hi\n[error: {one_line}]\n"


async def test_odd_but_harmless_upstream_fields_are_skipped() -> None:
    body = (
        delta(["not", "text"])
        + delta(None)
        + event({"choices": ["x", {"delta": "y"}], "usage": 5})
        + delta("ok")
        + b"data: [DONE]\n\n"
    )
    events, failure = await run_deltas(body)
    assert failure is None
    assert [e.data for e in events[:-1]] == [{"delta": "ok"}]
    assert events[-1].data == {"finish_reason": None, "usage": None}
