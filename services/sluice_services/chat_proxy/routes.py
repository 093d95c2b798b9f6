"""``/v1/chat/completions``, ``/v1/models`` and the seed's ``/chat-stream``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from sluice.admission import StreamTicket, open_stream
from sluice.body import BodyError, parse_json, parse_json_object, read_body
from sluice.caller import caller_key
from sluice.errors import ApiError
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format
from sluice.runtime import Runtime
from sluice.streaming import StreamResponse
from sluice_services.chat_proxy.leaving import until_disconnect
from sluice_services.chat_proxy.proxy import ChatProxy
from sluice_services.chat_proxy.relay import Relay
from sluice_services.chat_proxy.schema import validate
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.upstream import UpstreamError, UpstreamResponse, first_chunk
from sluice_services.chat_proxy.usage import BadUsage, usage_counts


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


def build_router(runtime: Runtime[ChatSettings]) -> APIRouter:
    """The routes, around one ChatProxy whose upstream pool lives as long as the worker."""
    proxy = ChatProxy(runtime)
    runtime.resources.append(proxy.lifespan)
    limit = runtime.rates.limit
    router = APIRouter(tags=["chat"])

    @router.post("/v1/chat/completions", response_model=None)
    @limit()
    async def completions(request: Request) -> Response:
        raw = await read_body(request, proxy.settings.chat_max_body_bytes)
        payload = parse_json_object(raw)  # finite numbers only: nothing forwarded as NaN
        body = validate(payload)
        proxy.tokens.check(caller_key(request))
        if not body.stream:
            return await _complete(request, payload, body.model)
        wants_usage = bool(body.stream_options and body.stream_options.include_usage)
        options = dict(payload.get("stream_options") or {})
        payload["stream_options"] = {**options, "include_usage": True}
        ticket = await open_stream(request)
        relay = Relay(proxy, request, body.model, wants_usage)
        return await _relay(ticket, payload, relay, StreamFormat.SSE, passthrough=True)

    @router.get("/v1/models", response_model=None)
    @limit()
    async def models(request: Request) -> Response:
        status, body = await proxy.get("/models")
        if status != 200:
            raise ApiError(502, "upstream_error", f"the model server answered {status}")
        return Response(body, media_type="application/json")

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
        ticket = await open_stream(request)
        relay = Relay(proxy, request, chosen, client_wants_usage=False)
        return await _relay(ticket, payload, relay, fmt, passthrough=False)

    async def _complete(request: Request, payload: dict[str, Any], model: str) -> Response:
        # Raced against the client leaving, as a stream's start is: the upstream request is
        # cancelled at once, not run to its end for nobody.
        raw = await until_disconnect(request.receive, _answer(payload))
        if raw is None:
            raise _client_left()
        prompt, completion = _answer_usage(raw)
        proxy.account(request, model, prompt, completion)
        return Response(raw, media_type="application/json")

    async def _answer(payload: dict[str, Any]) -> bytes:
        response = await proxy.send(payload, stream=False)
        try:
            return await response.read()
        except UpstreamError as exc:
            raise proxy.failure(exc) from None
        finally:
            await response.close()

    def _answer_usage(raw: bytes) -> tuple[int, int]:
        """A non-streamed answer's token counts; a 502 ``upstream_protocol`` when it is not
        a JSON object (plain JSON, finite numbers, not too deep) with a well-formed usage:
        its cost unknown, it is not passed on."""
        try:
            answer = parse_json(raw)
            if not isinstance(answer, dict):
                raise BadUsage(f"the answer is a JSON {type(answer).__name__}, not an object")
            return usage_counts(answer.get("usage"))
        except BodyError as exc:
            problem = exc.message.replace("the body", "the answer")
        except BadUsage as exc:
            problem = str(exc)
        raise proxy.failure(UpstreamError("protocol", f"malformed answer: {problem}"))

    async def _relay(
        ticket: StreamTicket,
        payload: dict[str, Any],
        relay: Relay,
        fmt: StreamFormat,
        *,
        passthrough: bool,
    ) -> StreamResponse:
        # Our headers go out with the first upstream byte: until then a failure is a
        # plain JSON error (502/504/4xx) that every client, the SDK included, understands.
        # A client that leaves before it (a long prefill) cancels the upstream request.
        try:
            started = await until_disconnect(ticket.request.receive, _start(payload))
        except BaseException:
            ticket.release()
            raise
        if started is None:  # (the upstream request is cancelled, its connection closed)
            ticket.release()
            raise _client_left()
        response, chunks, first = started
        events: AsyncIterator[Event | bytes] = (
            relay.passthrough(first, chunks, response)
            if passthrough
            else relay.deltas(first, chunks, response)
        )
        # An answer cannot be resumed elsewhere: on drain it may finish within the window.
        return ticket.response(events, fmt, on_end=[relay.finish], drain="finish")

    async def _start(
        payload: dict[str, Any],
    ) -> tuple[UpstreamResponse, AsyncIterator[bytes], bytes]:
        """The upstream stream, opened up to its first chunk that says something."""
        response = await proxy.send(payload, stream=True)
        chunks = response.chunks()
        try:
            first = await first_chunk(chunks)
            if first is None:
                raise UpstreamError("reset", "empty body")
        except BaseException as exc:  # (cancelled too: the client left)
            await response.close()
            if isinstance(exc, UpstreamError):
                raise proxy.failure(exc) from None
            raise
        return response, chunks, first

    return router
