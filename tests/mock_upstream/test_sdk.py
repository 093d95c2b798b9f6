"""The official openai SDK, unchanged, against a real mock process: it parses every API."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator

import openai
import pytest
from openai.types.responses import ResponseCompletedEvent, ResponseErrorEvent

from sluice_services.mock_upstream.text import mock_reasoning, mock_text
from tests.support.procs import Proc
from tests.support.upstream import UPSTREAM_KEY

pytestmark = pytest.mark.anyio
TOKENS = 20  # the shared mock's default


@pytest.fixture
async def client(mock_upstream: Proc) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{mock_upstream.url}/v1", api_key=UPSTREAM_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk


async def test_legacy_completions(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model="mock-gpt", prompt="one two three")
    assert whole.object == "text_completion"
    assert whole.choices[0].text == mock_text(TOKENS)
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (3, TOKENS)
    stream = await client.completions.create(
        model="mock-gpt",
        prompt=["one", "two"],
        stream=True,
        max_tokens=6,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == mock_text(6)
    assert finish == "stop"
    assert usage is not None and usage.total_tokens == 2 + 6


async def test_embeddings_default_base64_and_float_agree(client: openai.AsyncOpenAI) -> None:
    # No encoding_format: the SDK asks for base64 and decodes it itself.
    default = await client.embeddings.create(model="mock-embed", input=["alpha", "beta"])
    floats = await client.embeddings.create(
        model="mock-embed", input=["alpha", "beta"], encoding_format="float"
    )
    raw = await client.embeddings.create(
        model="mock-embed", input=["alpha", "beta"], encoding_format="base64"
    )
    assert [len(e.embedding) for e in default.data] == [8, 8]
    assert [e.embedding for e in default.data] == [e.embedding for e in floats.data]
    assert default.data[0].embedding != default.data[1].embedding
    assert default.usage.prompt_tokens == 2 and default.usage.total_tokens == 2
    # Asked for explicitly, base64 is left as the string it is.
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str)
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == floats.data[0].embedding
    wide = await client.embeddings.create(model="m", input=[[1, 2], [3]], dimensions=256)
    assert [len(e.embedding) for e in wide.data] == [256, 256]
    assert [e.index for e in wide.data] == [0, 1]


async def test_embeddings_refusals_are_sdk_errors(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as empty:
        await client.embeddings.create(model="m", input=[])
    assert empty.value.code == "invalid_input"
    with pytest.raises(openai.UnprocessableEntityError):
        await client.embeddings.create(model="m", input="hi", dimensions=100_000)
    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model="mock-fault:status=429", input="hi")


async def test_responses_non_streamed(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="mock-gpt", input="one two three", instructions="be brief", max_output_tokens=7
    )
    assert response.status == "completed"
    assert response.output_text == mock_text(7)
    assert response.usage is not None
    assert response.usage.input_tokens == 5
    assert response.usage.output_tokens == 7
    assert response.usage.total_tokens == 12
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.instructions == "be brief"
    items = await client.responses.create(
        model="mock-gpt",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "one two"}]}],
    )
    assert items.output_text == mock_text(TOKENS)


async def test_responses_streamed(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(model="mock-gpt", input="one two three", stream=True)
    kinds, deltas, completed = [], [], None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if isinstance(event, ResponseCompletedEvent):
            completed = event.response
    assert "".join(deltas) == mock_text(TOKENS)
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    assert completed is not None and completed.usage is not None
    assert completed.output_text == mock_text(TOKENS)
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (3, TOKENS)
    # The SDK's own accumulating helper reads the same stream.
    async with client.responses.stream(model="mock-gpt", input="hi") as managed:
        final = await managed.get_final_response()
    assert final.output_text == mock_text(TOKENS)


async def test_responses_stream_that_fails_is_an_error_event(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="mock-fault:error_after=2", input="hi", stream=True
    )
    events = [event async for event in stream]
    last = events[-1]
    assert isinstance(last, ResponseErrorEvent)
    assert (last.code, last.message) == ("mock_mid_stream", "mock upstream failed mid-stream")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == mock_text(2)
    reset = await client.responses.create(model="mock-fault:reset_after=2", input="hi", stream=True)
    with pytest.raises(openai.APIConnectionError):
        async for _ in reset:
            pass


async def test_chat_reasoning_and_tool_calls_through_the_sdk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="mock-fault:reasoning=2,tool_call=5",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning, arguments, names, finish, usage = "", "", [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            if call.function is not None:
                arguments += call.function.arguments or ""
                if call.function.name:
                    names.append(call.function.name)
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning == mock_reasoning(2)
    assert arguments == '{"query":"' + mock_text(5) + '"}'
    assert names == ["get_weather"]
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens == 7
    bare = await client.chat.completions.create(
        model="mock-fault:no_usage=1", messages=[{"role": "user", "content": "hi"}]
    )
    assert bare.usage is None
    assert bare.choices[0].message.content == mock_text(TOKENS)
