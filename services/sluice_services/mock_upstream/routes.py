"""``/v1/chat/completions`` and ``/v1/models`` as OpenAI serves them, plus ``/mock/*`` stats."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from sluice.admission import stream
from sluice.body import JsonBodyRoute
from sluice.errors import ApiError
from sluice.formats import StreamFormat
from sluice.logs import request_id_var
from sluice.runtime import Runtime
from sluice.streaming import EndReason, StreamError
from sluice_services.mock_upstream.faults import Faults, FaultSpecError, parse_faults
from sluice_services.mock_upstream.ledger import Entry, Ledger
from sluice_services.mock_upstream.settings import MockSettings

WORDS = (
    "Sluice",
    " streams",
    " tokens",
    " from",
    " a",
    " mock",
    " upstream",
    " so",
    " every",
    " test",
    " sees",
    " the",
    " same",
    " answer",
    ".",
)


def mock_text(count: int) -> str:
    """The completion the mock gives for ``count`` tokens: deterministic."""
    return "".join(WORDS[i % len(WORDS)] for i in range(count))


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


def _prompt_tokens(body: ChatRequest) -> int:
    words = 0
    for message in body.messages:
        if isinstance(message.content, str):
            words += len(message.content.split())
    return max(1, words)


def _openai_error(status: int, message: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": f"mock_{status}"}},
        status_code=status,
    )


def build_router(runtime: Runtime[MockSettings]) -> APIRouter:
    settings = runtime.settings
    models = [m.strip() for m in settings.mock_models.split(",") if m.strip()]
    ledger = Ledger()
    router = APIRouter(tags=["mock upstream"], route_class=JsonBodyRoute)

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        created = 1_700_000_000
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": created, "owned_by": "sluice"}
                for m in models
            ],
        }

    @router.post("/v1/chat/completions", response_model=None)
    async def completions(request: Request, body: ChatRequest) -> Response:
        try:
            faults = parse_faults(request.headers.get("x-mock-fault"), body.model)
        except FaultSpecError as exc:
            raise ApiError(400, "invalid_fault", str(exc)) from None
        request_id = request_id_var.get() or "none"
        principal = getattr(request.state, "principal", None)
        entry = ledger.open(
            request_id, body.model, body.stream, principal.key_id if principal else None
        )
        entry.extra_fields = sorted(body.model_extra or {})
        if request.client is not None:
            entry.peer = f"{request.client.host}:{request.client.port}"
        if faults.status is not None:
            ledger.close(entry, f"status_{faults.status}")
            return _openai_error(faults.status, f"mock upstream failure {faults.status}")
        limit = body.max_completion_tokens or body.max_tokens
        count = faults.tokens or settings.dev_mock_tokens
        if limit is not None:
            count = min(count, limit)
        delay = faults.delay if faults.delay is not None else settings.dev_mock_token_delay
        prompt = _prompt_tokens(body)
        completion_id = f"chatcmpl-mock-{request_id[:24]}"
        if not body.stream:
            await asyncio.sleep(faults.first_token_delay + delay * count)
            entry.tokens_sent = count
            ledger.close(entry, "completed")
            return JSONResponse(
                _completion(completion_id, body.model, mock_text(count), prompt, count)
            )
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        frames = _frames(
            completion_id, body.model, count, delay, faults, prompt, include_usage, entry
        )

        def record(reason: EndReason) -> None:
            ledger.close(entry, "reset" if entry.end == "reset" else reason.value)

        return await stream(request, frames, StreamFormat.SSE, on_end=[record])

    @router.get("/mock/stats")
    async def stats() -> dict[str, int]:
        return dict(ledger.counts)

    @router.get("/mock/requests/{request_id}")
    async def seen(request_id: str) -> dict[str, Any]:
        entry = ledger.get(request_id)
        if entry is None:
            raise ApiError(404, "not_found", "no request with this id was seen")
        return entry

    return router


def _completion(cid: str, model: str, text: str, prompt: int, count: int) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": count,
            "total_tokens": prompt + count,
        },
    }


async def _frames(
    cid: str,
    model: str,
    count: int,
    delay: float,
    faults: Faults,
    prompt: int,
    include_usage: bool,
    entry: Entry,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    head = (
        f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
        f'"model":{json.dumps(model)},"choices":[{{"index":0,"delta":'
    )

    def frame(delta: str, finish: str = "null") -> bytes:
        return f'{head}{delta},"logprobs":null,"finish_reason":{finish}}}]}}\n\n'.encode()

    if faults.first_token_delay:  # prefill: not a byte of body until the first token
        await asyncio.sleep(faults.first_token_delay)
    yield frame('{"role":"assistant","content":""}')
    for i in range(count):
        if faults.stall and i == faults.stall_after:
            await asyncio.sleep(faults.stall)
        if faults.error_after is not None and i == faults.error_after:
            error = {
                "error": {
                    "message": "mock upstream failed mid-stream",
                    "type": "server_error",
                    "param": None,
                    "code": "mock_mid_stream",
                }
            }
            yield f"data: {json.dumps(error)}\n\n".encode()
            return
        if faults.reset_after is not None and i == faults.reset_after:
            entry.end = "reset"
            raise StreamError("mock upstream reset the connection", abort=True)
        if i and delay:
            await asyncio.sleep(delay)
        yield frame(f'{{"content":{json.dumps(WORDS[i % len(WORDS)])}}}')
        entry.tokens_sent = i + 1
    yield frame("{}", '"stop"')
    if include_usage:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": count,
            "total_tokens": prompt + count,
        }
        yield (
            f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{json.dumps(model)},"choices":[],"usage":{json.dumps(usage)}}}\n\n'
        ).encode()
    yield b"data: [DONE]\n\n"
