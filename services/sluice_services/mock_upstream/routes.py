"""The OpenAI routes the mock serves, ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings`` and ``/v1/responses``, plus ``/mock/*``: what it
saw. Each API's bytes are its own module's; here is what every request shares: its
faults, its ledger entry, a ``status`` fault's refusal, and how its answer goes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from sluice.admission import stream
from sluice.body import JsonBodyRoute
from sluice.errors import ApiError
from sluice.formats import StreamFormat
from sluice.logs import request_id_var
from sluice.runtime import Runtime
from sluice.streaming import EndReason
from sluice_services.mock_upstream import chat, completions, embeddings, responses
from sluice_services.mock_upstream.faults import Faults, FaultSpecError, parse_faults, parse_spec
from sluice_services.mock_upstream.ledger import Entry, Kind, Ledger
from sluice_services.mock_upstream.pacing import MidAnswerFailure, Pacer, answer_time
from sluice_services.mock_upstream.settings import MockSettings
from sluice_services.mock_upstream.text import WORDS, mock_text
from sluice_services.mock_upstream.wire import mid_answer_error, openai_error

__all__ = ["WORDS", "build_router", "mock_text"]  # the tests' expected answers come from here


def build_router(runtime: Runtime[MockSettings]) -> APIRouter:
    settings = runtime.settings
    models = [m.strip() for m in settings.mock_models.split(",") if m.strip()]
    default_faults = parse_spec(settings.dev_mock_fault)  # checked by the settings already
    ledger = Ledger()
    router = APIRouter(tags=["mock upstream"], route_class=JsonBodyRoute)

    def begin(
        request: Request, model: str, streamed: bool, kind: Kind, extra: dict[str, Any] | None
    ) -> tuple[Entry, Faults, str]:
        """The request's faults (a bad spec: 400) and its ledger entry."""
        try:
            faults = parse_faults(request.headers.get("x-mock-fault"), model, default_faults)
        except FaultSpecError as exc:
            raise ApiError(400, "invalid_fault", str(exc)) from None
        request_id = request_id_var.get() or "none"
        principal = getattr(request.state, "principal", None)
        key_id = principal.key_id if principal else None
        entry = ledger.open(request_id, model, streamed, key_id, kind)
        entry.extra_fields = sorted(extra or {})
        if request.client is not None:
            entry.peer = f"{request.client.host}:{request.client.port}"
        return entry, faults, request_id

    def refusal(entry: Entry, faults: Faults) -> Response | None:
        """``status=N``: the whole answer is that error."""
        if faults.status is None:
            return None
        ledger.close(entry, f"status_{faults.status}")
        return openai_error(faults.status, f"mock upstream failure {faults.status}")

    def pace(faults: Faults, limit: int | None) -> tuple[int, float]:
        """This answer's token count and the seconds between its tokens."""
        count = faults.tokens or settings.dev_mock_tokens
        if limit is not None:
            count = min(count, limit)
        delay = faults.delay if faults.delay is not None else settings.dev_mock_token_delay
        return count, delay

    async def answered(
        entry: Entry, faults: Faults, count: int, delay: float, body: Callable[[], Any]
    ) -> Response:
        """A non-streamed answer, once its stream would have ended (or failed: HTTP 500)."""
        try:
            await answer_time(faults, count, delay)
        except MidAnswerFailure:
            entry.tokens_sent = faults.error_after or 0
            ledger.close(entry, "error")
            return mid_answer_error()
        entry.tokens_sent = count
        ledger.close(entry, "completed")
        return JSONResponse(body())

    async def streamed(request: Request, entry: Entry, frames: AsyncIterator[bytes]) -> Response:
        def record(reason: EndReason) -> None:
            ledger.close(entry, "reset" if entry.end == "reset" else reason.value)

        return await stream(request, frames, StreamFormat.SSE, on_end=[record])

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
    async def chat_completions(request: Request, body: chat.ChatRequest) -> Response:
        extra = body.model_extra
        entry, faults, request_id = begin(request, body.model, body.stream, "chat", extra)
        if (refused := refusal(entry, faults)) is not None:
            return refused
        count, delay = pace(faults, body.max_completion_tokens or body.max_tokens)
        answer = chat.plan(body, faults, count, request_id)
        with_usage = not faults.no_usage
        if not body.stream:
            return await answered(
                entry, faults, answer.completion, delay, lambda: chat.completion(answer, with_usage)
            )
        include = with_usage and bool((body.stream_options or {}).get("include_usage"))
        frames = chat.frames(answer, Pacer(faults, delay, entry), include)
        return await streamed(request, entry, frames)

    @router.post("/v1/completions", response_model=None)
    async def text_completions(request: Request, body: completions.CompletionRequest) -> Response:
        entry, faults, request_id = begin(
            request, body.model, body.stream, "completions", body.model_extra
        )
        if (refused := refusal(entry, faults)) is not None:
            return refused
        count, delay = pace(faults, body.max_tokens)
        cid = f"cmpl-mock-{request_id[:24]}"
        prompt = completions.prompt_tokens(body)
        with_usage = not faults.no_usage
        if not body.stream:
            return await answered(
                entry,
                faults,
                count,
                delay,
                lambda: completions.completion(cid, body.model, prompt, count, with_usage),
            )
        include = with_usage and bool((body.stream_options or {}).get("include_usage"))
        pacer = Pacer(faults, delay, entry)
        frames = completions.frames(cid, body.model, prompt, count, pacer, include)
        return await streamed(request, entry, frames)

    @router.post("/v1/embeddings", response_model=None)
    async def create_embeddings(request: Request, body: embeddings.EmbeddingRequest) -> Response:
        # A bad input is a 400 before the ledger, as a body that fails its schema is.
        items = embeddings.inputs(body)
        entry, faults, _ = begin(request, body.model, False, "embeddings", body.model_extra)
        if (refused := refusal(entry, faults)) is not None:
            return refused
        if faults.first_token_delay:  # the only time an embedding takes
            await asyncio.sleep(faults.first_token_delay)
        answer = embeddings.answer(body, items, not faults.no_usage)
        ledger.close(entry, "completed")
        return JSONResponse(answer)

    @router.post("/v1/responses", response_model=None)
    async def create_response(request: Request, body: responses.ResponsesRequest) -> Response:
        entry, faults, request_id = begin(
            request, body.model, body.stream, "responses", body.model_extra
        )
        if (refused := refusal(entry, faults)) is not None:
            return refused
        count, delay = pace(faults, body.max_output_tokens)
        answer = responses.Answer(body, count, request_id)
        with_usage = not faults.no_usage
        if not body.stream:
            return await answered(
                entry, faults, count, delay, lambda: answer.response(True, with_usage)
            )
        frames = responses.frames(answer, Pacer(faults, delay, entry), with_usage)
        return await streamed(request, entry, frames)

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
