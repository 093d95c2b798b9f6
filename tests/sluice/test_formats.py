from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from starlette.requests import Request

from sluice.errors import ApiError
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format, encode


def _request(query: str = "", accept: str | None = None) -> Request:
    headers = [(b"accept", accept.encode())] if accept is not None else []
    return Request({"type": "http", "query_string": query.encode(), "headers": headers})


def test_sse_json_data_with_event_id_and_retry() -> None:
    frame = encode(Event(data={"a": 1}, event="update", id="7", retry=1500), StreamFormat.SSE)
    assert frame == b'event: update\ndata: {"a":1}\nid: 7\nretry: 1500\n\n'


def test_sse_multiline_text_becomes_one_data_line_each() -> None:
    frame = encode(Event(data="one\ntwo\r\nthree\n"), StreamFormat.SSE)
    assert frame == b"data: one\ndata: two\ndata: three\n\n"


def test_sse_text_is_not_json_quoted() -> None:
    assert encode(Event(data="Done!", event="complete"), StreamFormat.SSE) == (
        b"event: complete\ndata: Done!\n\n"
    )


def test_sse_retry_only_frame() -> None:
    assert encode(Event(retry=3000), StreamFormat.SSE) == b"retry: 3000\n\n"


_WITH_FIELD: dict[str, Callable[[str], Event]] = {
    "event": lambda value: Event(data="x", event=value),
    "id": lambda value: Event(data="x", id=value),
}


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_sse_fields_cannot_inject_lines(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match="single line"):
        _WITH_FIELD[field](bad)


def test_ndjson_is_one_object_per_line() -> None:
    frame = encode(Event(data={"p": 1}, event="progress", id="3"), StreamFormat.NDJSON)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert json.loads(frame) == {"id": "3", "event": "progress", "data": {"p": 1}}
    multiline = encode(Event(data="a\nb"), StreamFormat.NDJSON)
    assert multiline.count(b"\n") == 1 and json.loads(multiline) == {"data": "a\nb"}


def test_text_writes_strings_verbatim_and_other_data_as_json_lines() -> None:
    assert encode(Event(data="Count: 1\n"), StreamFormat.TEXT) == b"Count: 1\n"
    assert encode(Event(data="tok"), StreamFormat.TEXT) == b"tok"
    assert encode(Event(data={"a": 1}), StreamFormat.TEXT) == b'{"a":1}\n'
    assert encode(Event(data={"a": 1}, text="a=1\n"), StreamFormat.TEXT) == b"a=1\n"


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        ("", None, StreamFormat.SSE),
        ("", "*/*", StreamFormat.SSE),
        ("", "text/event-stream", StreamFormat.SSE),
        ("", "application/x-ndjson", StreamFormat.NDJSON),
        ("", "application/jsonl", StreamFormat.NDJSON),
        ("", "text/plain", StreamFormat.TEXT),
        ("", "text/plain;q=0.5, application/x-ndjson", StreamFormat.NDJSON),
        ("", "text/html, text/plain;q=0.9", StreamFormat.TEXT),
        ("format=ndjson", "text/event-stream", StreamFormat.NDJSON),
        ("format=TEXT", None, StreamFormat.TEXT),
    ],
)
def test_choose_format(query: str, accept: str | None, expected: StreamFormat) -> None:
    assert choose_format(_request(query, accept), StreamFormat.SSE) is expected


def test_choose_format_rejects_unknown_query_with_400() -> None:
    with pytest.raises(ApiError) as err:
        choose_format(_request("format=xml"), StreamFormat.SSE)
    assert err.value.status == 400 and "xml" in err.value.message


def test_choose_format_rejects_disallowed_format() -> None:
    with pytest.raises(ApiError) as err:
        choose_format(_request("format=text"), StreamFormat.SSE, [StreamFormat.SSE])
    assert err.value.status == 400


def test_choose_format_406_when_accept_matches_nothing() -> None:
    with pytest.raises(ApiError) as err:
        choose_format(_request(accept="image/png"), StreamFormat.SSE)
    assert err.value.status == 406 and "image/png" in err.value.message
