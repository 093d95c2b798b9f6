"""``/v1/embeddings``: deterministic unit vectors, float and base64 alike, and bad inputs
refused as OpenAI refuses them."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from typing import Any

import pytest

from sluice_services.mock_upstream.app import create_app
from sluice_services.mock_upstream.embeddings import MAX_INPUTS, MAX_VALUES
from tests.mock_upstream.helpers import FAST, error_of, post
from tests.support import asgi

pytestmark = pytest.mark.anyio
PATH = "/v1/embeddings"


async def embed(**body: Any) -> dict[str, Any]:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, {"model": "mock-embed", **body})
    assert result.status == 200, result.text
    answer: dict[str, Any] = json.loads(result.body)
    return answer


def vectors(answer: dict[str, Any]) -> list[list[float]]:
    return [item["embedding"] for item in answer["data"]]


def unbase64(text: str) -> list[float]:
    raw = base64.b64decode(text, validate=True)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def test_a_string_is_one_unit_vector_of_8_floats_by_default() -> None:
    answer = await embed(input="one two three")
    assert answer["object"] == "list"
    assert answer["model"] == "mock-embed"
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert len(answer["data"]) == 1
    item = answer["data"][0]
    assert list(item) == ["object", "index", "embedding"]
    assert (item["object"], item["index"]) == ("embedding", 0)
    vector = item["embedding"]
    assert len(vector) == 8 and all(isinstance(x, float) for x in vector)
    assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-6)
    # The floats are float32 values: packing them loses nothing.
    assert list(struct.unpack("<8f", struct.pack("<8f", *vector))) == vector


async def test_the_same_input_gets_the_same_vector_and_another_another() -> None:
    first = await embed(input=["alpha", "beta", "alpha"])
    again = await embed(input="alpha")
    alpha, beta, alpha_again = vectors(first)
    assert [item["index"] for item in first["data"]] == [0, 1, 2]
    assert alpha == alpha_again == vectors(again)[0]
    assert alpha != beta
    assert first["usage"]["prompt_tokens"] == 3


async def test_base64_is_the_little_endian_float32s_of_the_float_answer() -> None:
    floats = await embed(input=["alpha", "beta"], encoding_format="float", dimensions=32)
    encoded = await embed(input=["alpha", "beta"], encoding_format="base64", dimensions=32)
    for as_float, as_text in zip(vectors(floats), vectors(encoded), strict=True):
        assert isinstance(as_text, str)
        assert len(base64.b64decode(as_text)) == 32 * 4
        assert unbase64(as_text) == as_float


async def test_fewer_dimensions_are_a_renormalised_prefix() -> None:
    (long,) = vectors(await embed(input="alpha", dimensions=64))
    (short,) = vectors(await embed(input="alpha", dimensions=3))
    norm = math.hypot(*long[:3])
    assert len(short) == 3
    assert all(math.isclose(s, x / norm, rel_tol=1e-5) for s, x in zip(short, long, strict=False))
    (widest,) = vectors(await embed(input="alpha", dimensions=4096))
    assert len(widest) == 4096


async def test_token_ids_and_token_arrays() -> None:
    ids = await embed(input=[1, 2, 3])
    arrays = await embed(input=[[1, 2, 3], [4], [1, 2, 3]])
    text = await embed(input="1 2 3")
    assert len(ids["data"]) == 1
    assert ids["usage"]["prompt_tokens"] == 3
    assert arrays["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    first, second, third = vectors(arrays)
    assert first == third == vectors(ids)[0] != second
    assert vectors(text)[0] != first  # tokens are not their text


async def test_odd_but_valid_inputs_are_answered() -> None:
    answer = await embed(input=["\ud800 lone surrogate", "   ", "é" * 1000, "x"], user="u-1")
    assert len(answer["data"]) == 4
    big = await embed(input=[10**40, 0])
    assert len(vectors(big)[0]) == 8


BAD_INPUT: list[tuple[str, Any, str]] = [
    ("empty string", "", "input"),
    ("empty list", [], "input"),
    ("empty string in a list", ["a", ""], "input[1]"),
    ("empty token array", [[1], []], "input[1]"),
    ("a string then a number", ["a", 1], "input"),
    ("a number then a string", [1, "a"], "input"),
    ("a token array then a number", [[1], 2], "input"),
    ("negative token", [-1], "input"),
    ("negative in an array", [[1, -1]], "input[0]"),
    ("booleans", [True, False], "input"),
    ("float tokens", [1.5], "input"),
    ("a number", 5, "input"),
    ("null", None, "input"),
    ("an object", {"text": "hi"}, "input"),
    ("objects", [{"text": "hi"}], "input"),
    ("nested too deep", [[[1]]], "input[0]"),
    ("too many inputs", ["a"] * (MAX_INPUTS + 1), "input"),
]


@pytest.mark.parametrize(
    ("value", "param"), [(v, p) for _, v, p in BAD_INPUT], ids=[n for n, _, _ in BAD_INPUT]
)
async def test_a_bad_input_is_a_400_naming_it(value: Any, param: str) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, {"model": "m", "input": value})
        stats = json.loads((await asgi.request(app, "/mock/stats")).body)
    assert result.status == 400
    error = error_of(result)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        param,
        "invalid_input",
    )
    assert stats["embeddings"] == 0


BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("no input", {"model": "m"}),
    ("no model", {"input": "hi"}),
    ("model a number", {"model": 1, "input": "hi"}),
    ("dimensions zero", {"model": "m", "input": "hi", "dimensions": 0}),
    ("dimensions huge", {"model": "m", "input": "hi", "dimensions": 10**9}),
    ("dimensions past 4096", {"model": "m", "input": "hi", "dimensions": 4097}),
    ("dimensions a string", {"model": "m", "input": "hi", "dimensions": "8"}),
    ("dimensions a float", {"model": "m", "input": "hi", "dimensions": 8.0}),
    ("dimensions a boolean", {"model": "m", "input": "hi", "dimensions": True}),
    ("an unknown encoding", {"model": "m", "input": "hi", "encoding_format": "hex"}),
    ("encoding a number", {"model": "m", "input": "hi", "encoding_format": 1}),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_FIELDS], ids=[n for n, _ in BAD_FIELDS])
async def test_a_bad_field_is_a_422(body: dict[str, Any]) -> None:
    async with asgi.lifespan(create_app(FAST)) as app:
        result = await post(app, PATH, body)
    assert result.status == 422
    assert error_of(result)["type"] == "validation_error"


async def test_an_answer_past_the_value_budget_is_a_400_not_a_long_wait() -> None:
    inputs = MAX_VALUES // 4096 + 1
    async with asgi.lifespan(create_app(FAST)) as app:
        started = time.monotonic()
        result = await post(app, PATH, {"model": "m", "input": ["a"] * inputs, "dimensions": 4096})
        took = time.monotonic() - started
        at_budget = await post(
            app,
            PATH,
            {
                "model": "m",
                "input": ["a"] * (inputs - 1),
                "dimensions": 4096,
                "encoding_format": "base64",
            },
        )
    assert result.status == 400
    assert error_of(result)["param"] == "dimensions"
    assert took < 1
    assert at_budget.status == 200
    assert len(json.loads(at_budget.body)["data"]) == inputs - 1


async def test_faults_status_delay_and_no_usage() -> None:
    body = {"model": "m", "input": "hi"}
    async with asgi.lifespan(create_app(FAST)) as app:
        failed = await post(
            app, PATH, body, fault="status=500", headers=[("x-request-id", "emb-1")]
        )
        started = time.monotonic()
        slow = await post(app, PATH, body, fault="first_token_delay=0.3")
        took = time.monotonic() - started
        bare = await post(app, PATH, body, fault="no_usage=1")
        by_model = await post(app, PATH, {"model": "mock-fault:status=429", "input": "hi"})
        # Faults about tokens do not apply to an answer that has none.
        tokenless = await post(app, PATH, body, fault="error_after=0,reset_after=0,stall=5")
        bad = await post(app, PATH, body, fault="explode=1")
        entry = json.loads((await asgi.request(app, "/mock/requests/emb-1")).body)
        stats = json.loads((await asgi.request(app, "/mock/stats")).body)
    assert failed.status == 500
    assert error_of(failed)["type"] == "server_error"
    assert (entry["kind"], entry["end"], entry["stream"]) == ("embeddings", "status_500", False)
    assert slow.status == 200 and took >= 0.3
    assert bare.status == 200 and "usage" not in json.loads(bare.body)
    assert by_model.status == 429
    assert tokenless.status == 200
    assert bad.status == 400
    assert stats["embeddings"] == 5 and stats["streams"] == 0
