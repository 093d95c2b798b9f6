"""``/v1/embeddings``: a unit vector for each input, from a hash of it, so the same input
always gets the same vector (and a shorter ``dimensions`` is a prefix, renormalised, as
OpenAI's text-embedding-3 models shorten theirs).

``encoding_format: "base64"`` (what the official SDK asks for unless told otherwise) is
the base64 of the vector's little-endian float32s; ``"float"`` (the API's default) is the
same float32 values as JSON numbers, so both decode to equal lists.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import sys
from array import array
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from sluice.errors import ApiError
from sluice_services.mock_upstream.text import word_count

DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048  # OpenAI's own limit of one request
# Inputs x dimensions: one answer's floats, so one request's cost stays bounded.
MAX_VALUES = 1 << 20


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr
    # A string, strings, token ids or token arrays: checked by ``inputs``, which says what
    # is wrong as OpenAI does (param ``input``), not as four failed schemas.
    input: Any
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = Field(None, ge=1, le=MAX_DIMENSIONS)


class Input:
    """One input: the bytes its vector is hashed from, and its token count."""

    __slots__ = ("key", "tokens")

    def __init__(self, key: bytes, tokens: int) -> None:
        self.key = key
        self.tokens = tokens


def _invalid(message: str, param: str = "input") -> ApiError:
    return ApiError(
        400, "invalid_request_error", message, fields={"param": param, "code": "invalid_input"}
    )


def _is_token(value: object) -> bool:
    return type(value) is int and value >= 0  # not a bool, not a float


def _text(value: str, param: str) -> Input:
    if not value:
        raise _invalid(f"{param} must not be an empty string", param)
    # A lone surrogate ("\ud800") is valid JSON: it must hash, not fail.
    return Input(b"s" + value.encode("utf-8", "surrogatepass"), max(1, word_count(value)))


def _tokens(values: list[Any], param: str) -> Input:
    if not values:
        raise _invalid(f"{param} must not be an empty array", param)
    if not all(_is_token(v) for v in values):
        raise _invalid(f"{param}: token ids are non-negative integers", param)
    return Input(b"t" + ",".join(map(str, values)).encode(), len(values))


_SHAPES = (
    "input must be a string, an array of strings, an array of token ids or an array of token arrays"
)


def inputs(body: EmbeddingRequest) -> list[Input]:
    """The request's inputs, or a 400 saying what is wrong with them (or that their vectors
    would be more than ``MAX_VALUES`` floats)."""
    items = _inputs(body.input)
    dimensions = body.dimensions or DEFAULT_DIMENSIONS
    if len(items) * dimensions > MAX_VALUES:
        raise _invalid(
            f"{len(items)} inputs of {dimensions} dimensions is over {MAX_VALUES} values",
            "dimensions",
        )
    return items


def _inputs(value: Any) -> list[Input]:
    if isinstance(value, str):
        return [_text(value, "input")]
    if not isinstance(value, list):
        raise _invalid(_SHAPES)
    if not value:
        raise _invalid("input must not be an empty array")
    if len(value) > MAX_INPUTS:
        raise _invalid(f"input has {len(value)} items; at most {MAX_INPUTS}")
    first = value[0]
    if isinstance(first, str):
        if not all(isinstance(v, str) for v in value):
            raise _invalid("input: an array of strings has strings only")
        return [_text(v, f"input[{i}]") for i, v in enumerate(value)]
    if isinstance(first, list):
        if not all(isinstance(v, list) for v in value):
            raise _invalid("input: an array of token arrays has token arrays only")
        return [_tokens(v, f"input[{i}]") for i, v in enumerate(value)]
    if type(first) is int:
        return [_tokens(value, "input")]
    raise _invalid(_SHAPES)


def vector(key: bytes, dimensions: int) -> array[float]:
    """The unit vector of ``key``: float32s from its SHAKE-256 stream (platform-independent:
    the stream is read as little-endian int32s)."""
    raw = hashlib.shake_256(key).digest(4 * dimensions)
    ints = struct.unpack(f"<{dimensions}i", raw)
    scale = 1.0 / (math.hypot(*ints) or 1.0)
    return array("f", [x * scale for x in ints])


def encoded(values: array[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return values.tolist()
    if sys.byteorder == "big":
        values = array("f", values)
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def answer(body: EmbeddingRequest, items: list[Input], with_usage: bool) -> dict[str, Any]:
    """The ``list`` of embeddings of ``items`` (from :func:`inputs`)."""
    dimensions = body.dimensions or DEFAULT_DIMENSIONS
    encoding = body.encoding_format or "float"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encoded(vector(it.key, dimensions), encoding),
        }
        for i, it in enumerate(items)
    ]
    result: dict[str, Any] = {"object": "list", "data": data, "model": body.model}
    if with_usage:
        tokens = sum(it.tokens for it in items)
        result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return result
