"""``/v1/chat/completions``: the answer, streamed or not, with the chat-only faults
(``reasoning=N`` deltas before it, ``tool_call=N``: the answer is a tool call)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sluice_services.mock_upstream.faults import Faults
from sluice_services.mock_upstream.pacing import MidAnswerFailure, Pacer
from sluice_services.mock_upstream.text import (
    REASONING_JSON,
    WORDS,
    WORDS_JSON,
    dumps,
    mock_reasoning,
    mock_text,
    word_count,
)
from sluice_services.mock_upstream.wire import MID_STREAM_FRAME

DEFAULT_TOOL = "mock_lookup"
ARGUMENTS_KEY = "query"


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Any = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream_options: dict[str, Any] | None = None


def prompt_tokens(body: ChatRequest) -> int:
    words = 0
    for message in body.messages:
        if isinstance(message.content, str):
            words += word_count(message.content)
    return max(1, words)


def tool_name(body: ChatRequest) -> str:
    """The first function tool the request offers (as a model would pick), else a stock one."""
    tools = (body.model_extra or {}).get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            name: str = function["name"]
            return name
    return DEFAULT_TOOL


def tool_arguments(count: int) -> str:
    """The whole arguments of a ``tool_call=count`` answer: a JSON object."""
    return dumps({ARGUMENTS_KEY: mock_text(count)})


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """What one answer is made of: ``count`` content (or tool-argument) tokens after
    ``reasoning`` reasoning tokens."""

    cid: str
    model: str
    prompt: int
    count: int
    reasoning: int
    tool: str | None  # the tool's name when the answer is a tool call
    call_id: str

    @property
    def completion(self) -> int:
        return self.reasoning + self.count

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }
        if self.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning}
        return usage


def plan(body: ChatRequest, faults: Faults, count: int, request_id: str) -> ChatAnswer:
    """The answer for this request; ``tool_call=N`` is N argument tokens, whatever the limit
    (a cut tool call would not parse)."""
    tool = tool_name(body) if faults.tool_call else None
    return ChatAnswer(
        cid=f"chatcmpl-mock-{request_id[:24]}",
        model=body.model,
        prompt=prompt_tokens(body),
        count=faults.tool_call or count,
        reasoning=faults.reasoning,
        tool=tool,
        call_id=f"call_mock_{request_id[:24]}",
    )


def completion(answer: ChatAnswer, usage: bool) -> dict[str, Any]:
    """The non-streamed ``chat.completion``."""
    message: dict[str, Any] = {"role": "assistant", "content": mock_text(answer.count)}
    finish = "stop"
    if answer.tool is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": answer.call_id,
                "type": "function",
                "function": {"name": answer.tool, "arguments": tool_arguments(answer.count)},
            }
        ]
        finish = "tool_calls"
    if answer.reasoning:
        message["reasoning_content"] = mock_reasoning(answer.reasoning)
    body: dict[str, Any] = {
        "id": answer.cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = answer.usage()
    return body


async def frames(answer: ChatAnswer, pacer: Pacer, include_usage: bool) -> AsyncIterator[bytes]:
    """The ``chat.completion.chunk`` stream: a role delta, the reasoning deltas, the content
    (or tool-argument) deltas, a ``finish_reason`` chunk, the usage chunk, ``[DONE]``."""
    created = int(time.time())
    top = (
        f'data: {{"id":{dumps(answer.cid)},"object":"chat.completion.chunk",'
        f'"created":{created},"model":{dumps(answer.model)},"choices":'
    )
    head = f'{top}[{{"index":0,"delta":'

    def frame(delta: str, finish: str = "null") -> bytes:
        return f'{head}{delta},"logprobs":null,"finish_reason":{finish}}}]}}\n\n'.encode()

    # Every word's frame, once a stream: a token is then one index.
    reasoning, count = answer.reasoning, answer.count
    thinking = [frame(f'{{"reasoning_content":{w}}}') for w in REASONING_JSON] if reasoning else []
    tool = answer.tool
    if tool is None:
        main = [frame(f'{{"content":{w}}}') for w in WORDS_JSON]
    else:
        main = [frame(_arguments_delta(dumps(_in_string(w)))) for w in WORDS]
    total = reasoning + count
    entry = pacer.entry
    await pacer.prefill()  # prefill: not a byte of body until the first token
    yield frame('{"role":"assistant","content":""}')
    try:
        for i in range(total):
            await pacer.before(i)
            if i < reasoning:
                yield thinking[i % len(thinking)]
            elif tool is not None and (i == reasoning or i == total - 1):
                yield frame(_tool_delta(answer, i - reasoning))
            else:
                k = i - reasoning
                yield main[k % len(main)]
            entry.tokens_sent = i + 1
    except MidAnswerFailure:
        yield MID_STREAM_FRAME
        return
    yield frame("{}", '"tool_calls"' if tool is not None else '"stop"')
    if include_usage:
        yield f'{top}[],"usage":{dumps(answer.usage())}}}\n\n'.encode()
    yield b"data: [DONE]\n\n"


def _in_string(word: str) -> str:
    """``word`` as it sits inside a JSON string (the arguments are JSON text)."""
    return dumps(word)[1:-1]


def _arguments_delta(piece_json: str) -> str:
    return f'{{"tool_calls":[{{"index":0,"function":{{"arguments":{piece_json}}}}}]}}'


def _tool_delta(answer: ChatAnswer, k: int) -> str:
    """The first argument delta (it names the call) or the last (it closes the object):
    together with the middle ones, ``tool_arguments(count)``."""
    piece = _in_string(WORDS[k % len(WORDS)])
    if k == answer.count - 1:
        piece += '"}'
    if k == 0:
        piece = f'{{"{ARGUMENTS_KEY}":"' + piece
        call = {
            "index": 0,
            "id": answer.call_id,
            "type": "function",
            "function": {"name": answer.tool, "arguments": piece},
        }
        return dumps({"tool_calls": [call]})
    return _arguments_delta(dumps(piece))
