"""JSON request bodies, parsed strictly: anything that is not plain JSON is a 400 saying why.

``json.loads`` alone lets through what a service must not take or pass on: ``NaN``,
``Infinity`` and numbers too large for a float (which ``json.dumps`` writes back as the
non-JSON ``NaN``/``Infinity``), nesting deep enough to raise ``RecursionError`` (not a
``ValueError``: it escaped as a 500), and bytes in other encodings than UTF-8 (it guesses
UTF-16/32 from the first bytes). :func:`parse_json` refuses all of them with an
OpenAI-shaped error (``{"error": {"message", "type", "param", "code"}}``); duplicate keys
are allowed, the last one wins, as everywhere else.

FastAPI parses a route's body model itself (``await request.json()``) and turns a failure
into its own 400 or 422; a router made with ``route_class=JsonBodyRoute`` parses with
:func:`parse_json` instead.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Coroutine
from itertools import accumulate
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from sluice.errors import ApiError

# Deeper than any real request (an OpenAI tool's JSON schema is a few levels), far from the
# interpreter's recursion limit, which ``json.dumps`` and validators also use.
MAX_DEPTH = 64
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() and int() take every script's digits


class BodyError(ApiError):
    """A request body that is not acceptable JSON: 400 ``invalid_request_error``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(
            400, "invalid_request_error", message, fields={"param": None, "code": code}
        )


class _NonFinite(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _NonFinite(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NonFinite(f"{literal[:32]} is out of the range of a finite number")
    return value


# One decoder for every body (json.loads with hooks would build one per call).
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_finite)


def parse_json(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of a request body: UTF-8, finite numbers, at most ``max_depth`` levels
    of arrays and objects. Anything else raises :class:`BodyError`."""
    if not raw.strip():
        raise BodyError("the body is empty; a JSON object is expected", "empty_body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(
            f"the body is not valid UTF-8 (byte {exc.start}): JSON must be UTF-8",
            "invalid_encoding",
        ) from None
    try:
        value = _DECODER.decode(text)
    except _NonFinite as exc:
        raise BodyError(f"the body is not valid JSON: {exc}", "invalid_number") from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as exc:  # JSONDecodeError, and integers past int's digit limit
        if not isinstance(exc, json.JSONDecodeError):
            limit = sys.get_int_max_str_digits()
            message = f"the body is not valid JSON: an integer has more than {limit} digits"
            raise BodyError(message, "invalid_number") from None
        raise BodyError(f"the body is not valid JSON: {exc}", "invalid_json") from None
    # Counting brackets is C-speed; only a body with enough of them can be too deep.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth_exceeds(raw, max_depth):
        raise _too_deep(max_depth)
    return value


def parse_json_object(raw: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """As :func:`parse_json`, and the value must be a JSON object."""
    value = parse_json(raw, max_depth)
    if not isinstance(value, dict):
        raise BodyError(f"the body must be a JSON object, not {_json_type(value)}", "invalid_body")
    return value


def _too_deep(max_depth: int) -> BodyError:
    return BodyError(
        f"the body is nested deeper than {max_depth} levels of arrays and objects",
        "json_too_deep",
    )


# A JSON string (no structure inside); what is left of a body without them but brackets.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]


def _depth_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether a body that parsed nests arrays/objects deeper than ``max_depth``.

    On the bytes, mostly at C speed (walking the parsed value cost 8x the parse for a body
    of small arrays; this, at most about one parse): strings out, brackets only, and the
    depth is the highest running count of opened brackets.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _json_media_type(content_type: str | None) -> bool:
    """The media types FastAPI parses as JSON: ``application/json`` and ``application/*+json``."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes, declared or as it arrives:
    nothing past the limit is read (bodies are read before auth runs)."""
    declared = request.headers.get("content-length")
    if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "invalid_request_error",
        f"the request body exceeds {limit} bytes",
        fields={"param": None, "code": "body_too_large"},
    )


class _StrictJsonRequest(Request):
    """A request whose ``json()`` is :func:`parse_json` (what FastAPI calls for body models)
    and whose body is read no further than ``limit`` bytes."""

    _parsed: Any

    def __init__(self, scope: Any, receive: Any, limit: int) -> None:
        super().__init__(scope, receive)
        self._limit = limit

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            self._body = await read_body(self, self._limit)
        return self._body

    async def json(self) -> Any:
        try:
            return self._parsed
        except AttributeError:
            self._parsed = parse_json(await self.body())
            return self._parsed


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is parsed by :func:`parse_json` before FastAPI validates it,
    so a body that is not acceptable JSON is a :class:`BodyError` (400, OpenAI-shaped), not
    FastAPI's own 400/422 (or, for some bodies, a pass)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        body_field = self.body_field
        if body_field is None:
            return handler

        async def strict_json(request: Request) -> Response:
            limit = request.app.state.settings.max_body_bytes
            strict = _StrictJsonRequest(request.scope, request.receive, limit)
            if _json_media_type(strict.headers.get("content-type")):
                raw = await strict.body()
                if raw or body_field.field_info.is_required():
                    await strict.json()  # raises here, outside FastAPI's own handling
            return await handler(strict)

        return strict_json
