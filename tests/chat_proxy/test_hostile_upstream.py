"""chat-proxy (its ASGI app) against a hostile model server: a raw-socket server on
127.0.0.1 (tests/support/hostile_upstream.py) that breaks HTTP in every way it can.

For each attack: what the caller gets (an OpenAI-shaped JSON error with its status, or,
once streaming started, a last SSE error frame), that memory does not grow by the
attack's size (tracemalloc's peak), that the attacked connection is not pooled, and that
the next caller on the same worker gets its own answer, on another connection.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from sluice_services.chat_proxy.app import create_app
from sluice_services.chat_proxy.proxy import ChatProxy
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.upstream import Upstream
from tests.chat_proxy.conftest import CALLER_KEY
from tests.support import asgi
from tests.support.hostile_upstream import (
    BLOCK,
    Attack,
    HostileUpstream,
    Peer,
    answer_text,
    chunk,
    delta_event,
    head,
    honest_answer,
    hostile_upstream,
)

pytestmark = pytest.mark.anyio

MB = 1024 * 1024
READ_TIMEOUT = 1.0
# The defaults' ratio (SLUICE_HEARTBEAT_INTERVAL 15 s, SLUICE_UPSTREAM_READ_TIMEOUT 60 s).
HEARTBEAT = READ_TIMEOUT * 15 / 60
MAX_ANSWER = 1 * MB  # SLUICE_UPSTREAM_MAX_RESPONSE_BYTES in these tests
PEAK_BOUND = 16 * MB  # what the worker may allocate at peak during one attack
SSE = [("content-type", "text/event-stream")]
CHUNKED = [*SSE, ("transfer-encoding", "chunked")]


# The attacks: each answers one request, then ends (its bytes and time are bounded).


async def bad_chunk_size(peer: Peer) -> None:
    await peer.send(head(200, CHUNKED) + b"zz\r\n" + delta_event("x") + b"\r\n")
    await peer.linger(2)


async def bad_chunk_framing_mid_stream(peer: Peer) -> None:
    # A whole first event, then a chunk whose data overruns its size.
    await peer.send(head(200, CHUNKED) + chunk(delta_event("one")))
    await asyncio.sleep(0.05)
    await peer.send(b"3\r\n" + delta_event("too long for three bytes") + b"\r\n")
    await peer.linger(2)


async def chunk_size_overflow(peer: Peer) -> None:
    await peer.send(head(200, CHUNKED) + b"ffffffffffffffffffffffff\r\n" + b"x" * 100)
    await peer.linger(2)


async def length_and_chunked(peer: Peer) -> None:
    body = chunk(delta_event("smuggled")) + b"0\r\n\r\n"
    await peer.send(head(200, [*CHUNKED, ("content-length", "5")]) + body)
    await peer.linger(2)


async def short_content_length(peer: Peer) -> None:
    # The length covers the first event only: the rest comes after the response's end.
    first = delta_event("one")
    rest = delta_event("two") + b"data: [DONE]\n\n"
    await peer.send(head(200, SSE, len(first)) + first + rest)
    await peer.linger(2)


async def long_content_length_then_close(peer: Peer) -> None:
    body = b'{"choices": [{"message": {"content": "part'
    await peer.send(head(200, [("content-type", "application/json")], 10_000) + body)


async def long_content_length_then_silence(peer: Peer) -> None:
    body = b'{"choices": [{"message": {"content": "part'
    await peer.send(head(200, [("content-type", "application/json")], 10_000) + body)
    await peer.linger(READ_TIMEOUT * 3)


async def informational_storm(peer: Peer) -> None:
    await peer.send_repeated(b"HTTP/1.1 100 Continue\r\n\r\n" * 2000, 64 * MB)


async def slow_headers(peer: Peer) -> None:
    await peer.send(b"HTTP/1.1 200 OK\r\n")
    for _ in range(int(READ_TIMEOUT * 3 / 0.05)):  # one byte every 50 ms
        await peer.send(b"x")
        await asyncio.sleep(0.05)


async def endless_header(peer: Peer) -> None:
    await peer.send(b"HTTP/1.1 200 OK\r\nx-endless: ")
    await peer.send_repeated(b"a" * BLOCK, 200 * MB)


async def endless_trailer(peer: Peer) -> None:
    # A whole chunked body, its last (empty) chunk, then a trailer that never ends.
    if peer.request.stream:
        body = delta_event("one")
    else:
        body = json.dumps({"choices": [{"message": {"content": "x"}}]}).encode()
    json_or_sse = CHUNKED if peer.request.stream else [("transfer-encoding", "chunked")]
    await peer.send(head(200, json_or_sse) + chunk(body) + b"0\r\nx-trailer: ")
    await peer.send_repeated(b"a" * BLOCK, 400 * MB)


async def sse_without_blank_line(peer: Peer) -> None:
    await peer.send(head(200, SSE) + delta_event("first"))  # read to close
    await peer.send_repeated(b'data: {"choices":[]}\n' * 3000, 100 * MB)


async def one_endless_data_line(peer: Peer) -> None:
    await peer.send(head(200, CHUNKED) + chunk(delta_event("first")))
    await peer.send(b"%x\r\ndata: " % (50 * MB + 6))
    await peer.send_repeated(b"a" * BLOCK, 50 * MB)


async def huge_error_body(peer: Peer) -> None:
    await peer.send(head(500, [("content-type", "application/json")], 300 * MB))
    await peer.send_repeated(b"e" * BLOCK, 300 * MB)


async def huge_answer(peer: Peer) -> None:
    await peer.send(head(200, [("content-type", "application/json")], 300 * MB))
    await peer.send_repeated(b" " * BLOCK, 300 * MB)


async def gzipped_answer(peer: Peer) -> None:
    body = gzip.compress(honest_answer(peer.request).split(b"\r\n\r\n", 1)[1])
    headers = [("content-type", "application/json"), ("content-encoding", "gzip")]
    await peer.send(head(200, headers, len(body)) + body)
    await peer.linger(2)


async def late_unrequested_answer(peer: Peer) -> None:
    # An honest answer, then, while the connection idles in the pool, another one that
    # nobody asked for: the next caller must not take it as its answer.
    await peer.honest()
    await asyncio.sleep(0.1)
    poison = json.dumps({"choices": [{"message": {"content": "POISON"}}]}).encode()
    await peer.send(head(200, [("content-type", "application/json")], len(poison)) + poison)
    await peer.linger(2)


async def reset_mid_chunk(peer: Peer) -> None:
    await peer.send(head(200, CHUNKED) + chunk(delta_event("one")))
    await asyncio.sleep(0.05)
    await peer.send(b'40\r\ndata: {"choi')
    await asyncio.sleep(0.05)
    peer.reset()


async def reset_read_to_close(peer: Peer) -> None:
    # No length, no chunking: the body ends with the connection, but a reset is no end.
    await peer.send(head(200, [("content-type", "application/json")]) + b'{"choices": [')
    await asyncio.sleep(0.05)
    peer.reset()


async def heartbeats_only(peer: Peer) -> None:
    # Headers, then only SSE comments at the heartbeat interval: a stuck model server
    # behind a framework that keeps its connections alive (a Sluice one does).
    await peer.send(head(200, CHUNKED))
    for _ in range(int(READ_TIMEOUT * 4 / HEARTBEAT)):
        await peer.send(chunk(b": ping\n\n"))
        await asyncio.sleep(HEARTBEAT)


async def heartbeats_after_a_token(peer: Peer) -> None:
    await peer.send(head(200, CHUNKED) + chunk(delta_event("one")))
    for _ in range(int(READ_TIMEOUT * 4 / HEARTBEAT)):
        await asyncio.sleep(HEARTBEAT)
        await peer.send(chunk(b": ping\n\n"))


@dataclass
class Case:
    attack: Attack
    stream: bool
    status: int
    code: str  # the error's code (JSON error or the last SSE error frame)
    within: float = 3.0  # seconds the caller waits at most
    settings: dict[str, Any] = field(default_factory=dict)


CASES = {
    "bad chunk size": Case(bad_chunk_size, True, 502, "upstream_protocol"),
    "bad chunk framing mid-stream": Case(
        bad_chunk_framing_mid_stream, True, 200, "upstream_protocol"
    ),
    "chunk-size overflow": Case(chunk_size_overflow, True, 502, "upstream_protocol"),
    "content-length and chunked": Case(length_and_chunked, True, 502, "upstream_protocol"),
    "short content-length, streamed": Case(short_content_length, True, 200, "upstream_protocol"),
    "short content-length": Case(short_content_length, False, 502, "upstream_protocol"),
    "long content-length, then close": Case(
        long_content_length_then_close, False, 502, "upstream_reset"
    ),
    "long content-length, then silence": Case(
        long_content_length_then_silence, False, 504, "upstream_timeout"
    ),
    "1xx storm": Case(informational_storm, True, 502, "upstream_protocol"),
    "slow headers": Case(slow_headers, True, 504, "upstream_timeout"),
    "a header that never ends": Case(endless_header, True, 502, "upstream_protocol", 2.0),
    # Was 7 s of CPU, ~200 MB, then a 504 (non-streamed); 67 MB within 1 s (streamed).
    "a trailer that never ends": Case(endless_trailer, False, 502, "upstream_protocol", 1.0),
    "a trailer that never ends, streamed": Case(
        endless_trailer, True, 200, "upstream_protocol", 1.0
    ),
    "100 MB of SSE without a blank line": Case(
        sse_without_blank_line, True, 200, "upstream_too_large"
    ),
    "one 50 MB data line": Case(one_endless_data_line, True, 200, "upstream_too_large"),
    # An answer may be large here: the error body has its own, small, bound.
    "300 MB error body": Case(
        huge_error_body,
        True,
        502,
        "upstream_500",
        settings={"upstream_max_response_bytes": 64 * MB},
    ),
    "300 MB answer": Case(huge_answer, False, 502, "upstream_too_large"),
    "gzip": Case(gzipped_answer, False, 502, "upstream_protocol"),
    "gzip, streamed": Case(gzipped_answer, True, 502, "upstream_protocol"),
    "late unrequested answer on an idle pooled connection": Case(
        late_unrequested_answer, False, 200, ""
    ),
    "reset mid-chunk": Case(reset_mid_chunk, True, 200, "upstream_reset"),
    "reset of a read-to-close body": Case(reset_read_to_close, False, 502, "upstream_reset"),
    # Comments before the first event are held: a first token that never comes is a 504.
    "heartbeats, no first token": Case(heartbeats_only, True, 504, "upstream_timeout", 2.5),
    "heartbeats after a token": Case(heartbeats_after_a_token, True, 200, "upstream_timeout", 2.5),
}


def settings(upstream: HostileUpstream, **overrides: Any) -> ChatSettings:
    values: dict[str, Any] = {
        "api_keys": SecretStr(CALLER_KEY),
        "upstream_base_url": upstream.base_url,
        "upstream_read_timeout": READ_TIMEOUT,
        "heartbeat_interval": HEARTBEAT,
        "upstream_max_response_bytes": MAX_ANSWER,
        **overrides,
    }
    return ChatSettings(**values)


def pool_of(app: FastAPI) -> Upstream:
    for resource in app.state.runtime.resources:
        owner = getattr(resource, "__self__", None)
        if isinstance(owner, ChatProxy):
            (endpoint,) = owner.endpoints.all()  # (one upstream: the one-deployment form)
            return endpoint.upstream
    raise AssertionError("no chat proxy in the app")


def pooled_ports(upstream: Upstream) -> set[int]:
    conns = [*upstream.pool._idle, *upstream.pool._busy]
    return {c.transport.get_extra_info("sockname")[1] for c in conns if c.transport}


@asynccontextmanager
async def proxy_against_hostile(**overrides: Any) -> AsyncIterator[tuple[FastAPI, HostileUpstream]]:
    async with (
        hostile_upstream() as upstream,
        asgi.lifespan(create_app(settings(upstream, **overrides))) as app,
    ):
        yield app, upstream


async def complete(app: FastAPI, rid: str, stream: bool, timeout: float = 10) -> asgi.Result:
    payload = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
    return await asgi.request(
        app,
        "/v1/chat/completions",
        method="POST",
        headers=[
            ("authorization", f"Bearer {CALLER_KEY}"),
            ("content-type", "application/json"),
            ("x-request-id", rid),
        ],
        body=json.dumps({**payload, "stream": stream}).encode(),
        timeout=timeout,
    )


def data_lines(result: asgi.Result) -> list[str]:
    return [line[6:] for line in result.text.split("\n") if line.startswith("data: ")]


def error_of(result: asgi.Result) -> dict[str, Any]:
    """The error the caller got: the JSON body's, or the last SSE frame's."""
    if result.status != 200:
        assert result.headers["content-type"].startswith("application/json")
        error: dict[str, Any] = json.loads(result.body)["error"]
    else:
        assert result.headers["content-type"].startswith("text/event-stream")
        lines = data_lines(result)
        assert lines and "[DONE]" not in lines, result.text[:300]
        error = json.loads(lines[-1])["error"]
        assert result.completed  # a clean end of the response after the error frame
    assert {"message", "type", "code"} <= set(error) and error["message"]
    return error


def own_answer(result: asgi.Result, rid: str, stream: bool) -> str:
    assert result.status == 200, result.text[:300]
    if stream:
        lines = data_lines(result)
        assert lines[-1] == "[DONE]"
        deltas = [json.loads(x)["choices"] for x in lines[:-1]]
        return "".join(c[0]["delta"].get("content") or "" for c in deltas if c)
    content: str = json.loads(result.body)["choices"][0]["message"]["content"]
    return content


@pytest.mark.parametrize("name", list(CASES))
async def test_a_hostile_upstream_fails_one_caller_clearly_and_the_next_gets_its_own_answer(
    name: str,
) -> None:
    case = CASES[name]
    async with proxy_against_hostile(**case.settings) as (app, upstream):
        warm = await complete(app, "warm-up", stream=True)  # a pooled connection to reuse
        assert own_answer(warm, "warm-up", True) == answer_text("warm-up")
        upstream.arm(case.attack)
        tracemalloc.start()
        started = time.monotonic()
        try:
            result = await complete(app, "attacked", case.stream, timeout=case.within + 5)
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        attacked = upstream.attacked
        assert attacked is not None and attacked.request_id == "attacked"

        assert result.status == case.status, result.text[:300]
        if case.code:
            assert error_of(result)["code"] == case.code
        else:  # the attack came after an honest answer: this caller got it
            assert own_answer(result, "attacked", case.stream) == answer_text("attacked")
        assert elapsed < case.within, elapsed
        assert peak < PEAK_BOUND, f"{peak / MB:.1f} MB at peak"

        await asyncio.sleep(0.3)  # a late answer has arrived by now
        client = pool_of(app)
        assert attacked.port not in pooled_ports(client)  # the attacked connection is gone
        for n, stream in enumerate((True, False, True)):
            rid = f"next-{n}"
            assert own_answer(await complete(app, rid, stream), rid, stream) == answer_text(rid)
        after = [r for r in upstream.requests if r.request_id.startswith("next-")]
        assert len(after) == 3 and attacked.port not in {r.port for r in after}


async def test_a_redirect_is_an_upstream_error_and_is_never_followed() -> None:
    async with hostile_upstream() as elsewhere, proxy_against_hostile() as (app, upstream):

        async def redirect(peer: Peer) -> None:
            target = f"{elsewhere.base_url}/chat/completions"
            await peer.send(head(307, [("location", target)], 0))
            peer.serve_on = True  # a well-framed answer: the connection may be reused

        for stream in (True, False):
            upstream.arm(redirect)
            result = await complete(app, f"redirected-{stream}", stream)
            assert result.status == 502
            error = error_of(result)
            assert error["code"] == "upstream_307" and "not followed" in error["message"]
        await asyncio.sleep(0.2)
        assert elsewhere.connections == 0  # the prompt went nowhere else
        assert own_answer(await complete(app, "after", True), "after", True) == answer_text("after")


async def test_regression_a_post_was_sent_twice_when_its_reused_connection_failed() -> None:
    # The model server read the request (and may have started generating, and billing)
    # and then dropped the connection: the POST must not go again on a new one.
    async with proxy_against_hostile() as (app, upstream):
        warm = await complete(app, "warm-up", stream=False)
        assert own_answer(warm, "warm-up", False) == answer_text("warm-up")

        async def read_then_close(peer: Peer) -> None:
            peer.writer.close()

        upstream.arm(read_then_close)
        result = await complete(app, "once", stream=False)
        assert result.status == 502 and error_of(result)["code"] == "upstream_reset"
        assert [r.request_id for r in upstream.requests].count("once") == 1


@pytest.mark.parametrize("fmt", ["text", "sse", "ndjson"])
async def test_chat_stream_bounds_an_upstream_event_too(fmt: str) -> None:
    # /chat-stream parses the events (the pass-through only frames them): the same bound.
    async with proxy_against_hostile() as (app, upstream):
        upstream.arm(one_endless_data_line)
        tracemalloc.start()
        try:
            result = await asgi.request(app, f"/chat-stream?prompt=hi&format={fmt}", timeout=5)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.status == 200 and result.completed
        assert f"exceeds {ChatSettings().upstream_max_event_bytes} bytes" in result.text
        assert "first" in result.text  # the event before it went out
        assert peak < PEAK_BOUND, f"{peak / MB:.1f} MB at peak"
        after = await asgi.request(app, "/chat-stream?prompt=hi", headers=[("x-request-id", "n")])
        assert after.text.startswith(answer_text("n"))


def sse_answer(rid: str, eol: bytes, split: bool) -> Attack:
    """An honest streamed answer whose lines end in ``eol``; with ``split``, each chunk
    ends one byte into its event's blank line (a CRLF cut between its CR and its LF)."""

    async def attack(peer: Peer) -> None:
        events = [delta_event(answer_text(rid)), b"data: [DONE]\n\n"]
        body = b"".join(e.replace(b"\n", eol) for e in events)
        cut = body.index(eol + eol) + len(eol) + 1
        pieces = [body[:cut], body[cut:]] if split else [body]
        await peer.send(head(200, CHUNKED) + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n")
        peer.serve_on = True

    return attack


@pytest.mark.parametrize(("eol", "split"), [(b"\r", False), (b"\r", True), (b"\r\n", True)])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat-stream"])
async def test_regression_an_upstream_that_ends_its_lines_in_cr_was_not_understood(
    path: str, eol: bytes, split: bool
) -> None:
    # SSE lines may end in CRLF, LF or a bare CR: a bare-CR upstream got "closed the
    # stream before [DONE]" (or upstream_too_large past 1 MB).
    async with proxy_against_hostile() as (app, upstream):
        upstream.arm(sse_answer("cr", eol, split))
        if path == "/chat-stream":
            result = await asgi.request(app, "/chat-stream?prompt=hi", timeout=5)
            assert result.status == 200 and result.text == answer_text("cr") + "\n"
        else:
            result = await complete(app, "cr", True, timeout=5)
            assert own_answer(result, "cr", True) == answer_text("cr")
            assert "\r" not in result.text  # line ends come out as LF
        # The plain LF answer beside it, on the same connection.
        assert own_answer(await complete(app, "lf", True), "lf", True) == answer_text("lf")


def json_answer(body: bytes) -> Attack:
    async def attack(peer: Peer) -> None:
        await peer.send(head(200, [("content-type", "application/json")], len(body)) + body)
        peer.serve_on = True  # well framed: the connection may be reused

    return attack


MESSAGE = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}


def answer_with(**members: Any) -> bytes:
    return json.dumps({**MESSAGE, **members}).encode()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (answer_with(usage=[1]), "usage is a list"),
        (answer_with(usage={"prompt_tokens": "abc"}), "prompt_tokens is a str"),
        (answer_with(usage={"completion_tokens": 2.5}), "completion_tokens is a float"),
        (answer_with(usage={"prompt_tokens": True}), "prompt_tokens is a bool"),
        (answer_with(usage={"prompt_tokens": -5}), "not in 0.."),
        (answer_with(usage={"prompt_tokens": 2**63}), "not in 0.."),
        (b'{"usage": {"prompt_tokens": 1e400}}', "finite"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'["not an object"]', "not an object"),
        (b'{"choices": [', "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
async def test_regression_a_malformed_non_streamed_answer_was_a_500(
    body: bytes, problem: str
) -> None:
    # json.loads' RecursionError, usage.get on a list, int("abc"), int(1e400): all 500s.
    async with proxy_against_hostile() as (app, upstream):
        upstream.arm(json_answer(body))
        result = await complete(app, "bad", False)
        assert result.status == 502, result.text[:300]
        error = error_of(result)
        assert error["code"] == "upstream_protocol" and problem in error["message"]
        assert own_answer(await complete(app, "next", False), "next", False) == "answer for next"


@pytest.mark.parametrize(
    "body",
    [
        answer_with(usage={"prompt_tokens": 2, "completion_tokens": 3}),
        answer_with(usage=None),  # no usage (or null counts): nothing charged, no error
        answer_with(usage={"prompt_tokens": None}),
        answer_with(),
    ],
)
async def test_well_formed_non_streamed_answers_pass_as_they_are(body: bytes) -> None:
    async with proxy_against_hostile() as (app, upstream):
        upstream.arm(json_answer(body))
        result = await complete(app, "good", False)
        assert result.status == 200 and result.body == body


def stream_with_usage(usage: bytes) -> Attack:
    async def attack(peer: Peer) -> None:
        last = b'data: {"id":"c","choices":[],"usage":' + usage + b"}\n\n"
        events = [delta_event("one"), last, b"data: [DONE]\n\n"]
        await peer.send(head(200, CHUNKED) + b"".join(chunk(e) for e in events) + b"0\r\n\r\n")
        peer.serve_on = True

    return attack


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens":"abc"}',
        b'{"prompt_tokens":1,"completion_tokens":1e400}',
        b'{"prompt_tokens":-5,"completion_tokens":1}',
        b'{"completion_tokens":true}',
        b'{"prompt_tokens":[1]}',
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat-stream"])
async def test_regression_a_streams_malformed_usage_bypassed_the_token_budget(
    path: str, usage: bytes
) -> None:
    # The usage came after the tokens went out; int() raised inside the end callback, was
    # logged and swallowed: nothing was charged. Now the tokens the proxy counted are.
    async with proxy_against_hostile(chat_token_limit="1/hour") as (app, upstream):
        upstream.arm(stream_with_usage(usage))
        if path == "/chat-stream":
            first = await asgi.request(app, "/chat-stream?prompt=hi", timeout=5)
            assert first.text == "one\n"
            refused = await asgi.request(app, "/chat-stream?prompt=hi", timeout=5)
        else:
            first = await complete(app, "bad-usage", True)
            assert own_answer(first, "bad-usage", True) == "one"
            refused = await complete(app, "over", True)
        assert refused.status == 429, refused.text[:300]  # the one counted token was charged
        assert error_of(refused)["code"] == "tokens_exceeded"


async def test_a_streams_well_formed_usage_is_what_is_charged() -> None:
    async with proxy_against_hostile(chat_token_limit="3/hour") as (app, upstream):
        upstream.arm(stream_with_usage(b'{"prompt_tokens":1,"completion_tokens":1}'))
        assert own_answer(await complete(app, "a", True), "a", True) == "one"  # 2 of 3
        upstream.arm(stream_with_usage(b'{"prompt_tokens":0,"completion_tokens":1}'))
        assert own_answer(await complete(app, "b", True), "b", True) == "one"  # 3 of 3
        assert (await complete(app, "c", True)).status == 429


def spaced_usage_stream(prompt: int) -> Attack:
    """An upstream writing JSON with json.dumps' default separators (`"usage": {`)."""

    async def attack(peer: Peer) -> None:
        usage = {"prompt_tokens": prompt, "completion_tokens": 1}
        last = b"data: " + json.dumps({"id": "c", "choices": [], "usage": usage}).encode() + b"\n\n"
        events = [delta_event("one"), last, b"data: [DONE]\n\n"]
        await peer.send(head(200, CHUNKED) + b"".join(chunk(e) for e in events) + b"0\r\n\r\n")
        peer.serve_on = True

    return attack


async def test_regression_usage_written_with_spaces_was_never_charged() -> None:
    # `"usage": {` (a space after the colon) was not seen: prompt tokens were never charged.
    async with proxy_against_hostile(chat_token_limit="10/hour") as (app, upstream):
        upstream.arm(spaced_usage_stream(9))
        assert own_answer(await complete(app, "a", True), "a", True) == "one"  # 9 + 1 = 10
        upstream.arm(spaced_usage_stream(0))
        refused = await complete(app, "b", True)
    assert refused.status == 429, refused.text[:300]
    assert error_of(refused)["code"] == "tokens_exceeded"
