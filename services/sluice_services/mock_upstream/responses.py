"""``/v1/responses``, the Responses API: a ``response`` object, or its typed event stream.

Streamed, each event is ``event: <type>`` and ``data: {"type": <type>, ...,
"sequence_number": n}`` (n from 0, one more each event), in OpenAI's order:
``response.created``, ``response.in_progress`` (both the response so far: status
``in_progress``, no output, usage null), ``response.output_item.added``,
``response.content_part.added``, one ``response.output_text.delta`` a token,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``,
``response.completed`` (the whole response, with usage). No ``[DONE]``: the API has none.
A failure mid-stream (``error_after``) is ``event: error`` (``{"type": "error", "code",
"message", "param", "sequence_number"}``) and the end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from sluice_services.mock_upstream.pacing import MidAnswerFailure, Pacer
from sluice_services.mock_upstream.text import WORDS_JSON, dumps, mock_text, word_count
from sluice_services.mock_upstream.wire import MID_STREAM_CODE, MID_STREAM_MESSAGE


class InputPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class InputItem(BaseModel):
    """An input item; a message (the type when none is given) has a role and content."""

    model_config = ConfigDict(extra="allow")
    type: StrictStr = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: StrictStr | list[InputPart] | None = None

    @model_validator(mode="after")
    def _a_message_says_something(self) -> InputItem:
        if self.type == "message" and (self.role is None or self.content is None):
            raise ValueError("a message item has a role and a content")
        return self


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr
    input: StrictStr | Annotated[list[InputItem], Field(min_length=1)]
    stream: StrictBool = False
    max_output_tokens: StrictInt | None = Field(None, ge=1)
    instructions: StrictStr | None = None


def input_tokens(body: ResponsesRequest) -> int:
    words = word_count(body.instructions or "")
    if isinstance(body.input, str):
        words += word_count(body.input)
    else:
        for item in body.input:
            if isinstance(item.content, str):
                words += word_count(item.content)
            elif item.content is not None:
                words += sum(word_count(part.text or "") for part in item.content)
    return max(1, words)


def usage(prompt: int, count: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": count,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + count,
    }


class Answer:
    """One response's ids, sizes and the request fields a response echoes."""

    __slots__ = ("count", "created", "instructions", "limit", "model", "msg_id", "prompt", "rid")

    def __init__(self, body: ResponsesRequest, count: int, request_id: str) -> None:
        self.rid = f"resp_mock_{request_id[:24]}"
        self.msg_id = f"msg_mock_{request_id[:24]}"
        self.created = int(time.time())
        self.model = body.model
        self.instructions = body.instructions
        self.limit = body.max_output_tokens
        self.prompt = input_tokens(body)
        self.count = count

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def message(self, done: bool) -> dict[str, Any]:
        content = [self.part(mock_text(self.count))] if done else []
        return {
            "id": self.msg_id,
            "type": "message",
            "status": "completed" if done else "in_progress",
            "content": content,
            "role": "assistant",
        }

    def response(self, done: bool, with_usage: bool) -> dict[str, Any]:
        """The ``response`` object: in progress (no output yet) or completed."""
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": "completed" if done else "in_progress",
            "background": False,
            "completed_at": int(time.time()) if done else None,
            "error": None,
            "incomplete_details": None,
            "instructions": self.instructions,
            "max_output_tokens": self.limit,
            "metadata": {},
            "model": self.model,
            "output": [self.message(True)] if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage(self.prompt, self.count) if done and with_usage else None,
            "user": None,
        }


def _event(kind: str, seq: int, fields: dict[str, Any]) -> bytes:
    data = dumps({"type": kind, **fields, "sequence_number": seq})
    return f"event: {kind}\ndata: {data}\n\n".encode()


async def frames(answer: Answer, pacer: Pacer, with_usage: bool) -> AsyncIterator[bytes]:
    """The typed event stream of one response (the order: this module's docstring)."""
    where = {"item_id": answer.msg_id, "output_index": 0, "content_index": 0}
    delta = "response.output_text.delta"
    head = (
        f'event: {delta}\ndata: {{"type":"{delta}","item_id":{dumps(answer.msg_id)},'
        f'"output_index":0,"content_index":0,"delta":'
    )
    entry = pacer.entry
    await pacer.prefill()
    yield _event("response.created", 0, {"response": answer.response(False, with_usage)})
    yield _event("response.in_progress", 1, {"response": answer.response(False, with_usage)})
    item = {"output_index": 0, "item": answer.message(False)}
    yield _event("response.output_item.added", 2, item)
    yield _event("response.content_part.added", 3, {**where, "part": answer.part("")})
    seq = 4
    try:
        for i in range(answer.count):
            await pacer.before(i)
            word = WORDS_JSON[i % len(WORDS_JSON)]
            yield f'{head}{word},"logprobs":[],"sequence_number":{seq}}}\n\n'.encode()
            seq += 1
            entry.tokens_sent = i + 1
    except MidAnswerFailure:
        error = {"code": MID_STREAM_CODE, "message": MID_STREAM_MESSAGE, "param": None}
        yield _event("error", seq, error)
        return
    text = mock_text(answer.count)
    yield _event("response.output_text.done", seq, {**where, "text": text, "logprobs": []})
    yield _event("response.content_part.done", seq + 1, {**where, "part": answer.part(text)})
    item = {"output_index": 0, "item": answer.message(True)}
    yield _event("response.output_item.done", seq + 2, item)
    done = {"response": answer.response(True, with_usage)}
    yield _event("response.completed", seq + 3, done)
