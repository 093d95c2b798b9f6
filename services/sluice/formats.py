"""The three stream formats, their framing, and the one helper that picks between them."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import Any

from fastapi.sse import format_sse_event
from starlette.requests import HTTPConnection

from sluice.errors import ApiError
from sluice.events import Event


class StreamFormat(enum.StrEnum):
    TEXT = "text"
    SSE = "sse"
    NDJSON = "ndjson"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    StreamFormat.TEXT: "text/plain; charset=utf-8",
    StreamFormat.SSE: "text/event-stream; charset=utf-8",
    StreamFormat.NDJSON: "application/x-ndjson",
}

# Accept media ranges -> format. Several names are in use for NDJSON.
_ACCEPT = {
    "text/event-stream": StreamFormat.SSE,
    "application/x-ndjson": StreamFormat.NDJSON,
    "application/ndjson": StreamFormat.NDJSON,
    "application/jsonl": StreamFormat.NDJSON,
    "application/jsonlines": StreamFormat.NDJSON,
    "text/plain": StreamFormat.TEXT,
}

HEARTBEAT = b": ping\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def choose_format(
    conn: HTTPConnection,
    default: StreamFormat,
    allowed: Iterable[StreamFormat] = tuple(StreamFormat),
) -> StreamFormat:
    """Pick the stream format: ``?format=`` wins, then the ``Accept`` header, then ``default``.

    An unknown or disallowed ``?format=`` is a 400; an ``Accept`` header that names
    media types but none we can produce is a 406. Both carry a JSON body saying why.
    """
    allowed = tuple(allowed)
    names = ", ".join(f.value for f in allowed)
    asked = conn.query_params.get("format")
    if asked is not None:
        try:
            fmt = StreamFormat(asked.lower())
        except ValueError:
            fmt = None
        if fmt is None or fmt not in allowed:
            raise ApiError(400, "invalid_format", f"format={asked!r} is not one of: {names}")
        return fmt
    accept = conn.headers.get("accept", "")
    if not accept.strip():
        return default
    ranked: list[tuple[float, int, StreamFormat | None]] = []
    for position, item in enumerate(accept.split(",")):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        if media in ("*/*", "text/*", "application/*"):
            wildcard = default if media == "*/*" else _first_of_type(media, default, allowed)
            ranked.append((quality, position, wildcard))
        elif media in _ACCEPT and _ACCEPT[media] in allowed:
            ranked.append((quality, position, _ACCEPT[media]))
    choices = [fmt for _, _, fmt in sorted(ranked, key=lambda r: (-r[0], r[1])) if fmt]
    if choices:
        return choices[0]
    raise ApiError(
        406, "not_acceptable", f"Accept: {accept!r} matches none of this stream's formats: {names}"
    )


def _first_of_type(
    media: str, default: StreamFormat, allowed: tuple[StreamFormat, ...]
) -> StreamFormat | None:
    major = media.split("/")[0]
    if _MEDIA_TYPES[default].startswith(major + "/"):
        return default
    return next((f for f in allowed if _MEDIA_TYPES[f].startswith(major + "/")), None)


def encode(event: Event, fmt: StreamFormat) -> bytes:
    """One event's bytes on the wire in ``fmt``."""
    if fmt is StreamFormat.SSE:
        return encode_sse(event)
    if fmt is StreamFormat.NDJSON:
        return encode_ndjson(event)
    return encode_text(event)


def encode_sse(event: Event) -> bytes:
    data = event.data
    if data is None:
        data_str = None
    elif isinstance(data, str):
        # A trailing newline ends the line, it is not an extra empty data line.
        data_str = data[:-1] if data.endswith("\n") else data
    else:
        data_str = _dumps(data)
    return format_sse_event(data_str=data_str, event=event.event, id=event.id, retry=event.retry)


def encode_ndjson(event: Event) -> bytes:
    """``{"id"?, "event"?, "retry"?, "data"}``: one JSON object a line, fields as in SSE."""
    envelope: dict[str, Any] = {}
    if event.id is not None:
        envelope["id"] = event.id
    if event.event is not None:
        envelope["event"] = event.event
    if event.retry is not None:
        envelope["retry"] = event.retry
    envelope["data"] = event.data
    return (_dumps(envelope) + "\n").encode()


def encode_text(event: Event) -> bytes:
    if event.text is not None:
        return event.text.encode()
    if isinstance(event.data, str):
        return event.data.encode()
    if event.data is None:
        return b""
    return (_dumps(event.data) + "\n").encode()
