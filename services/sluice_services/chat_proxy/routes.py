"""The OpenAI routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``,
``/v1/embeddings``, ``/v1/models``) and the seed's ``/chat-stream``.

Each is routed, balanced and failed over (:mod:`chat_proxy.proxy`), metered and rate
limited alike. A stream's headers go out with its first upstream token: until then a
failure is a plain JSON error (502/503/504/4xx) every client understands. With early
headers on (a route's ``early_headers``), the 200 goes out at once and the core's
``: ping`` comments keep the connection alive while the model thinks; a failure before
the first token is then an SSE error event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from sluice.admission import StreamTicket, open_stream
from sluice.body import BodyError, parse_json, parse_json_object, read_body
from sluice.caller import caller_key
from sluice.errors import ApiError
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format
from sluice.runtime import Runtime
from sluice.streaming import StreamError, StreamResponse
from sluice_services.chat_proxy.apis import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Api
from sluice_services.chat_proxy.leaving import until_disconnect
from sluice_services.chat_proxy.metrics import TTFT_METRIC
from sluice_services.chat_proxy.proxy import ChatProxy, Started
from sluice_services.chat_proxy.relay import Relay, error_event
from sluice_services.chat_proxy.resumable import Answers, wants_resume
from sluice_services.chat_proxy.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponsesRequest,
    validate,
)
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.upstream import UpstreamError
from sluice_services.chat_proxy.usage import BadUsage, estimate_prompt_tokens, usage_counts


def _already_answered() -> Response:
    """A reconnect to /chat-stream: 204, which ends an EventSource for good.

    Every event of a /chat-stream answer has an id, from the first on, so only a client
    that got (part of) an answer sends ``Last-Event-ID``: the answer it got, whole or cut,
    cannot be resumed, and running the prompt again would be another answer, each
    reconnect a new completion. A stream that never sent an event (a drain's reconnect
    hint has no id) is reconnected without the header and gets its answer.
    """
    return Response(status_code=204, headers={"cache-control": "no-store"})


def _client_left() -> ApiError:
    """The answer (to nobody, but for the access log) when the client left before the
    first token: nginx's 499, "client closed request"."""
    return ApiError(
        499,
        "client_closed_request",
        "the client left before the first token",
        fields={"param": None, "code": "client_closed_request"},
    )


def _early_failure(error: ApiError, typed: bool, deltas: bool) -> StreamError:
    """A failure before the first token of a stream whose 200 already went out: its error
    as the stream's last event, in the stream's own form."""
    body = {"message": error.message, "type": error.type, **error.fields}
    if deltas:
        failed = Event(
            event="failed", id="1", data={"error": body}, text=f"[error: {error.message}]\n"
        )
        return StreamError(error.message, last=failed)
    return StreamError(error.message, last=error_event(body, typed))


def build_router(runtime: Runtime[ChatSettings]) -> APIRouter:
    """The routes, around one ChatProxy whose endpoints live as long as the worker."""
    proxy = ChatProxy(runtime)
    runtime.resources.append(proxy.lifespan)
    answers = Answers(runtime, proxy)  # resumable answers (closed before the proxy)
    runtime.resources.append(answers.lifespan)
    runtime.latencies["time_to_first_token"] = TTFT_METRIC  # shown on the Streams page
    limit = runtime.rates.limit
    router = APIRouter(tags=["chat"])

    @router.post("/v1/chat/completions", response_model=None)
    @limit()
    async def chat_completions(request: Request) -> Response:
        return await _openai(request, CHAT, ChatCompletionRequest)

    @router.post("/v1/completions", response_model=None)
    @limit()
    async def completions(request: Request) -> Response:
        return await _openai(request, COMPLETIONS, CompletionRequest)

    @router.post("/v1/responses", response_model=None)
    @limit()
    async def responses(request: Request) -> Response:
        return await _openai(request, RESPONSES, ResponsesRequest)

    @router.post("/v1/embeddings", response_model=None)
    @limit()
    async def embeddings(request: Request) -> Response:
        return await _openai(request, EMBEDDINGS, EmbeddingRequest)

    @router.get(
        "/v1/chat/completions/{answer_id}/events",
        response_class=StreamResponse,
        response_model=None,
        summary="Resume a resumable answer after an event (Last-Event-ID or ?after=)",
    )
    @limit()
    async def answer_events(request: Request, answer_id: str) -> Response:
        info = await answers.owned(request, answer_id)
        after = answers.after_of(request, info)
        if after is None:  # the reader has it all, the end included: 204 ends an EventSource
            return Response(status_code=204, headers={"cache-control": "no-store"})
        ticket = await open_stream(request)
        answers.resumed()
        return answers.response(ticket, answer_id, after)

    @router.delete("/v1/chat/completions/{answer_id}", response_model=None)
    @limit()
    async def cancel_answer(request: Request, answer_id: str) -> Response:
        """Stop a resumable answer at once (its upstream request cancelled); its readers get
        its end, an ``answer_cancelled`` error event."""
        info = await answers.owned(request, answer_id)
        if not info.ended:
            await answers.cancel(answer_id)
            info = await answers.store.info(answer_id) or info
        return JSONResponse(
            {
                "id": answer_id,
                "object": "chat.completion.answer",
                "status": "ended" if info.ended else "stopping",
                "events": info.last,
            }
        )

    @router.get("/v1/models", response_model=None)
    @limit()
    async def models(request: Request) -> Response:
        return JSONResponse(await proxy.model_list())

    @router.get("/chat-stream", response_class=StreamResponse)
    @limit()
    async def chat_stream(
        request: Request,
        prompt: str = Query("Tell a story", min_length=1, max_length=8000),
        model: str | None = Query(None, max_length=256),
    ) -> Response:
        fmt = choose_format(request, StreamFormat.TEXT)
        if request.headers.get("last-event-id"):
            return _already_answered()
        proxy.tokens.check(caller_key(request))
        chosen = model or proxy.settings.chat_default_model
        payload = {
            "model": chosen,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        _, options = proxy.route(chosen)
        ticket = await open_stream(request)
        relay = Relay(
            proxy,
            request,
            chosen,
            client_wants_usage=False,
            prompt_estimate=estimate_prompt_tokens(payload),
        )
        early = options.early_headers and fmt is StreamFormat.SSE
        return await _relay(ticket, CHAT, payload, relay, fmt, passthrough=False, early=early)

    async def _openai(request: Request, api: Api, schema: type[BaseModel]) -> Response:
        raw = await read_body(request, proxy.settings.chat_max_body_bytes)
        payload = parse_json_object(raw)  # finite numbers only: nothing forwarded as NaN
        body: Any = validate(payload, schema)
        proxy.tokens.check(caller_key(request))
        model: str = body.model
        _, options = proxy.route(model)
        if getattr(body, "background", None):
            raise ApiError(
                400,
                "invalid_request_error",
                "background responses are not proxied: stream it, or wait for it",
                fields={"param": "background", "code": "unsupported_parameter"},
            )
        resume_asked = wants_resume(request, payload)
        default = proxy.settings.chat_resumable and api is CHAT
        resumable = default if resume_asked is None else resume_asked
        if not getattr(body, "stream", False):
            return await _complete(request, api, payload, model)
        if resumable and api is not CHAT:
            raise ApiError(
                400,
                "invalid_request_error",
                "only streamed chat completions are resumable",
                fields={"param": "X-Sluice-Resumable", "code": "unsupported_parameter"},
            )
        asked = getattr(body, "stream_options", None)  # (the Responses API has none of it)
        wants_usage = bool(asked and asked.include_usage)
        if not api.typed:  # (a Responses stream always ends with its usage)
            options_asked = dict(payload.get("stream_options") or {})
            payload["stream_options"] = {**options_asked, "include_usage": True}
        ticket = await open_stream(request)
        relay = Relay(
            proxy,
            request,
            model,
            wants_usage,
            api=api,
            prompt_estimate=estimate_prompt_tokens(payload),
        )
        if resumable:
            return await _resumable(ticket, api, payload, relay, asked=bool(resume_asked))
        return await _relay(
            ticket,
            api,
            payload,
            relay,
            StreamFormat.SSE,
            passthrough=True,
            early=options.early_headers,
        )

    async def _complete(
        request: Request, api: Api, payload: dict[str, Any], model: str
    ) -> Response:
        # Raced against the client leaving, as a stream's start is: the upstream request is
        # cancelled at once, not run to its end for nobody.
        raw = await until_disconnect(request.receive, proxy.complete(api.path, payload, model))
        if raw is None:
            raise _client_left()
        prompt, completion = _answer_usage(raw, api)
        proxy.account(request, model, prompt, completion)
        return Response(raw, media_type="application/json")

    def _answer_usage(raw: bytes, api: Api) -> tuple[int, int]:
        """A whole answer's token counts; a 502 ``upstream_protocol`` when it is not a JSON
        object (plain JSON, finite numbers, not too deep) with a well-formed usage: its cost
        unknown, it is not passed on."""
        try:
            answer = parse_json(raw)
            if not isinstance(answer, dict):
                raise BadUsage(f"the answer is a JSON {type(answer).__name__}, not an object")
            usage = answer.get("usage")
            if api.typed and isinstance(usage, dict):
                usage = {
                    "prompt_tokens": usage.get("input_tokens"),
                    "completion_tokens": usage.get("output_tokens"),
                }
            return usage_counts(usage)
        except BodyError as exc:
            problem = exc.message.replace("the body", "the answer")
        except BadUsage as exc:
            problem = str(exc)
        raise proxy.failure("any", UpstreamError("protocol", f"malformed answer: {problem}"))

    async def _relay(
        ticket: StreamTicket,
        api: Api,
        payload: dict[str, Any],
        relay: Relay,
        fmt: StreamFormat,
        *,
        passthrough: bool,
        early: bool,
    ) -> StreamResponse:
        def events_of(started: Started) -> AsyncIterator[Event | bytes]:
            if passthrough:
                return relay.passthrough(started.first, started.chunks, started.response)
            return relay.deltas(started.first, started.chunks, started.response)

        if early:
            # An answer cannot be resumed elsewhere: on drain it may finish within the window.
            return ticket.response(
                _early(api, payload, relay, fmt, events_of, deltas=not passthrough),
                fmt,
                on_end=[relay.finish],
                drain="finish",
            )
        started, headers = await _first_token(ticket, api, payload, relay)
        return ticket.response(
            events_of(started), fmt, headers=headers, on_end=[relay.finish], drain="finish"
        )

    async def _first_token(
        ticket: StreamTicket, api: Api, payload: dict[str, Any], relay: Relay
    ) -> tuple[Started, dict[str, str]]:
        """The attempts, up to a first token; the stream and its headers. A client that
        leaves before the first token (a long prefill) cancels the attempt."""
        try:
            outcome = await until_disconnect(
                ticket.request.receive, proxy.start_stream(api.path, payload, relay.model)
            )
        except BaseException:
            ticket.release()
            raise
        if outcome is None:  # (the upstream request is cancelled, its connection closed)
            ticket.release()
            raise _client_left()
        relay.attach(outcome.lease)
        return outcome.value, {"x-sluice-attempts": str(outcome.attempts)}

    async def _resumable(
        ticket: StreamTicket, api: Api, payload: dict[str, Any], relay: Relay, *, asked: bool
    ) -> StreamResponse:
        """A resumable answer: generated by a task of its own, which takes the stream's cap
        slot (it counts as the key's stream while it runs, read or not); its first reader
        this response (its headers after the first token, early headers or not)."""
        started, headers = await _first_token(ticket, api, payload, relay)
        answer_id = await answers.begin(ticket.request, relay, started, ticket.take_slot())
        return answers.response(ticket, answer_id, 0, headers, knows_resume=asked)

    async def _early(
        api: Api,
        payload: dict[str, Any],
        relay: Relay,
        fmt: StreamFormat,
        events_of: Callable[[Started], AsyncIterator[Event | bytes]],
        *,
        deltas: bool,
    ) -> AsyncIterator[Event | bytes]:
        """The stream of an early 200: the attempts run under the core's heartbeat."""
        try:
            outcome = await proxy.start_stream(api.path, payload, relay.model)
        except ApiError as error:
            raise _early_failure(error, api.typed, deltas) from None
        relay.attach(outcome.lease)
        started: Started = outcome.value
        try:
            async for item in events_of(started):
                yield item
        finally:
            await started.response.close()

    return router
