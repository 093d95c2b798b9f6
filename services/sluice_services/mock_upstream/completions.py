"""``/v1/completions``, the legacy text completions: ``prompt`` in, ``text`` out.

A list of prompts is answered once (one choice, index 0), its words all counted as the
prompt: OpenAI answers each prompt, which a proxy relays the same way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from sluice_services.mock_upstream.pacing import MidAnswerFailure, Pacer
from sluice_services.mock_upstream.text import WORDS_JSON, dumps, mock_text, word_count
from sluice_services.mock_upstream.wire import MID_STREAM_FRAME


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: StrictStr
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
    stream: StrictBool = False
    max_tokens: StrictInt | None = Field(None, ge=1)
    stream_options: dict[str, Any] | None = None


def prompt_tokens(body: CompletionRequest) -> int:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    return max(1, sum(word_count(p) for p in prompts))


def usage(prompt: int, count: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": count, "total_tokens": prompt + count}


def completion(cid: str, model: str, prompt: int, count: int, with_usage: bool) -> dict[str, Any]:
    """The non-streamed ``text_completion``."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"text": mock_text(count), "index": 0, "logprobs": None, "finish_reason": "stop"}
        ],
    }
    if with_usage:
        body["usage"] = usage(prompt, count)
    return body


async def frames(
    cid: str, model: str, prompt: int, count: int, pacer: Pacer, include_usage: bool
) -> AsyncIterator[bytes]:
    """One ``text_completion`` chunk a token, a ``finish_reason`` chunk, the usage chunk
    (``choices: []``) when asked, then ``[DONE]``."""
    created = int(time.time())
    top = (
        f'data: {{"id":{dumps(cid)},"object":"text_completion","created":{created},'
        f'"model":{dumps(model)},"choices":'
    )
    head = f'{top}[{{"text":'

    def frame(text: str, finish: str = "null") -> bytes:
        return f'{head}{text},"index":0,"logprobs":null,"finish_reason":{finish}}}]}}\n\n'.encode()

    words = [frame(w) for w in WORDS_JSON]
    entry = pacer.entry
    await pacer.prefill()
    try:
        for i in range(count):
            await pacer.before(i)
            yield words[i % len(words)]
            entry.tokens_sent = i + 1
    except MidAnswerFailure:
        yield MID_STREAM_FRAME
        return
    yield frame('""', '"stop"')
    if include_usage:
        yield f'{top}[],"usage":{dumps(usage(prompt, count))}}}\n\n'.encode()
    yield b"data: [DONE]\n\n"
