"""Strict JSON bodies: every service's body routes answer unparseable bodies with a 400."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import SecretStr
from starlette.types import Message, Scope

from sluice.body import MAX_DEPTH, BodyError, parse_json, parse_json_object
from sluice_services.demo.app import create_app as demo_app
from sluice_services.demo.settings import DemoSettings
from sluice_services.mock_upstream.app import create_app as mock_app
from sluice_services.mock_upstream.settings import MockSettings
from sluice_services.progress.app import create_app as progress_app
from sluice_services.progress.settings import ProgressSettings
from tests.support import asgi

pytestmark = pytest.mark.anyio

KEY = "sk-test-body-000000000000000000000"
JSON = ("content-type", "application/json")
AUTH = ("authorization", f"Bearer {KEY}")
DEEP = 100_000


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


# (body, error code): what json.loads took or choked on, each a 400 now.
HOSTILE = [
    pytest.param(b"", "empty_body", id="empty"),
    pytest.param(b" \r\n\t ", "empty_body", id="whitespace"),
    pytest.param(b"{not json", "invalid_json", id="syntax"),
    pytest.param(b'{"a": 1', "invalid_json", id="truncated"),
    pytest.param(nested(DEEP), "json_too_deep", id="deep-array-100k"),
    pytest.param(b'{"a":' * DEEP + b"1" + b"}" * DEEP, "json_too_deep", id="deep-object-100k"),
    pytest.param(b"[" * DEEP, "json_too_deep", id="deep-unterminated"),
    pytest.param(nested(MAX_DEPTH + 1), "json_too_deep", id="deep-just-past-the-bound"),
    pytest.param(b'{"a": NaN}', "invalid_number", id="NaN"),
    pytest.param(b'{"a": [1, {"b": Infinity}]}', "invalid_number", id="Infinity-nested"),
    pytest.param(b'{"a": -Infinity}', "invalid_number", id="-Infinity"),
    pytest.param(b'{"a": 1e309}', "invalid_number", id="1e309"),
    pytest.param(b'{"a": -1e400}', "invalid_number", id="-1e400"),
    pytest.param(b'{"a": ' + b"9" * 5000 + b"}", "invalid_number", id="int-5000-digits"),
    pytest.param(b'{"a": "\xff\xfe"}', "invalid_encoding", id="invalid-utf8"),
    pytest.param(b'{"a": "\xed\xa0\x80"}', "invalid_encoding", id="utf8-encoded-surrogate"),
    pytest.param('{"a": 1}'.encode("utf-16"), "invalid_encoding", id="utf-16"),
]


@pytest.mark.parametrize(("raw", "code"), HOSTILE)
def test_parse_json_refuses_with_a_code_that_says_why(raw: bytes, code: str) -> None:
    with pytest.raises(BodyError) as caught:
        parse_json(raw)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.fields == {"param": None, "code": code}
    assert caught.value.message


def test_parse_json_takes_plain_json() -> None:
    assert parse_json(b'{"a": 1, "a": 2}') == {"a": 2}  # duplicate keys: the last one wins
    assert parse_json(b'{"x": 1e308, "y": -0.0, "z": 12345678901234567890}') == {
        "x": 1e308,
        "y": -0.0,
        "z": 12345678901234567890,
    }
    assert parse_json(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))  # the bound itself
    assert parse_json('{"é": "\u2603"}'.encode()) == {"é": "\u2603"}
    assert parse_json(b'"[[[[{{{{"') == "[[[[{{{{"  # brackets in a string are no nesting
    assert parse_json(b"[]") == []


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max([depth_of(v) for v in value.values()], default=0)
    if isinstance(value, list):
        return 1 + max([depth_of(v) for v in value], default=0)
    return 0


def test_the_depth_bound_is_exact_whatever_the_strings_hold() -> None:
    # The depth is measured on the bytes: brackets, quotes and backslashes inside strings
    # (keys too) must not count. Checked against the parsed value's depth, at the bound.
    rng = random.Random(13)
    tricky = ["[", "]{", '"', "\\", '\\"[', "}", "x", ""]

    def build(depth: int) -> object:
        if depth == 0:
            return rng.choice([*tricky, 1, 2.5, None, True])
        # one child as deep as it goes, two shallow ones beside it: linear in the depth
        children = [build(depth - 1)] + [build(rng.randint(0, min(2, depth - 1))) for _ in "ab"]
        rng.shuffle(children)
        if rng.random() < 0.5:
            return children
        return {rng.choice(tricky) + str(i): child for i, child in enumerate(children)}

    for _ in range(300):
        value = build(rng.choice([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, rng.randint(1, 80)]))
        raw = json.dumps(value).encode()
        depth = depth_of(value)
        if depth > MAX_DEPTH:
            with pytest.raises(BodyError, match="nested deeper"):
                parse_json(raw)
        else:
            assert parse_json(raw) == value


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[]", "an array"), (b'"x"', "a string"), (b"1", "a number"), (b"null", "null")],
)
def test_parse_json_object_names_what_it_got(raw: bytes, kind: str) -> None:
    with pytest.raises(BodyError) as caught:
        parse_json_object(raw)
    assert caught.value.fields["code"] == "invalid_body"
    assert kind in caught.value.message


def assert_openai_400(result: asgi.Result, code: str) -> None:
    assert result.status == 400, result.body[:300]
    error = json.loads(result.body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] is None
    assert error["message"]


# Every route of every service that takes a body FastAPI parses (chat-proxy reads its own:
# tests/chat_proxy/test_routes.py). Before, nesting was FastAPI's vague 400 ("There was an
# error parsing the body"), invalid UTF-8 and empty bodies 422, and NaN got through.
async def _progress(raw: bytes) -> asgi.Result:
    settings = ProgressSettings(api_keys=SecretStr(KEY), service_name="progress-body")
    async with asgi.lifespan(progress_app(settings)) as app:
        return await asgi.request(app, "/jobs", method="POST", headers=[AUTH, JSON], body=raw)


async def _mock(raw: bytes) -> asgi.Result:
    settings = MockSettings(dev_mock_token_delay=0, dev_mock_tokens=2, service_name="mock-body")
    async with asgi.lifespan(mock_app(settings)) as app:
        return await asgi.request(
            app, "/v1/chat/completions", method="POST", headers=[JSON], body=raw
        )


async def _stream_token(raw: bytes) -> asgi.Result:  # on every service; here demo's
    settings = DemoSettings(api_keys=SecretStr(KEY), service_name="demo-body")
    async with asgi.lifespan(demo_app(settings)) as app:
        return await asgi.request(
            app, "/auth/stream-token", method="POST", headers=[AUTH, JSON], body=raw
        )


ROUTES = {"progress": _progress, "mock_upstream": _mock, "stream_token": _stream_token}
VALID = {
    "progress": {"kind": "simulate", "params": {"steps": 1, "delay": 0}},
    "mock_upstream": {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
    "stream_token": {"path": "/dummy-events"},
}
OK = {"progress": 202, "mock_upstream": 200, "stream_token": 200}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize(("raw", "code"), HOSTILE)
async def test_every_body_route_answers_a_bad_body_with_an_openai_400(
    route: str, raw: bytes, code: str
) -> None:
    assert_openai_400(await ROUTES[route](raw), code)


@pytest.mark.parametrize("route", list(ROUTES))
async def test_every_body_route_still_takes_good_bodies_and_refuses_nan_in_any_field(
    route: str,
) -> None:
    good = json.dumps(VALID[route]).encode()
    assert (await ROUTES[route](good)).status == OK[route]
    duplicate = good[:-1] + b", " + good[1:]  # every key twice: the last one wins
    assert (await ROUTES[route](duplicate)).status == OK[route]
    unknown_nan = good[:-1] + b', "extra": {"deep": [NaN]}}'
    assert_openai_400(await ROUTES[route](unknown_nan), "invalid_number")
    # JSON, but not an object: the model's own 422 naming the body, never a 500.
    not_object = await ROUTES[route](b"[1, 2]")
    assert not_object.status == 422
    assert json.loads(not_object.body)["error"]["type"] == "validation_error"


async def test_a_body_that_is_not_declared_json_is_left_to_fastapi() -> None:
    # text/plain is not parsed as JSON by FastAPI (strict content type): a 422, as before.
    settings = ProgressSettings(api_keys=SecretStr(KEY), service_name="progress-body-text")
    async with asgi.lifespan(progress_app(settings)) as app:
        result = await asgi.request(
            app,
            "/jobs",
            method="POST",
            headers=[AUTH, ("content-type", "text/plain")],
            body=nested(DEEP),
        )
    assert result.status == 422


async def test_regression_an_unauthenticated_huge_body_was_read_whole_before_auth() -> None:
    # A 400 MB POST without a key pushed a worker from 57 MB to 838 MB before its 401: the
    # body was read whole before the auth dependency ran. Now no more than the limit is read.
    settings = DemoSettings(api_keys=SecretStr(KEY), service_name="demo-cap", max_body_bytes=4096)
    consumed = 0

    async def receive() -> Message:
        nonlocal consumed
        consumed += 1024
        return {"type": "http.request", "body": b"x" * 1024, "more_body": consumed < 10**8}

    answer = asgi.Result()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
        elif message["type"] == "http.response.body":
            answer.chunks.append(message.get("body", b""))

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/auth/stream-token",
        "raw_path": b"/auth/stream-token",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],  # no length: chunked
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    async with asgi.lifespan(demo_app(settings)) as app:
        await app(scope, receive, send)
        declared = await asgi.request(
            app,
            "/auth/stream-token",
            method="POST",
            headers=[JSON, ("content-length", str(10**9))],
            body=b"{}",
        )
    assert answer.status == 413
    error = json.loads(answer.body)["error"]
    assert error["code"] == "body_too_large" and "4096" in error["message"]
    assert consumed <= 4096 + 1024  # read up to the limit, not to the end
    assert declared.status == 413  # a declared length over the limit: refused unread
