"""``/v1/chat/completions``, ``/v1/models`` and the seed's ``/chat-stream``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from chat_proxy.proxy import ChatProxy, Relay
from chat_proxy.schema import validate
from chat_proxy.upstream import UpstreamError, first_chunk
from sluice.body import parse_json_object
from sluice.errors import ApiError
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format
from sluice.limits import caller_key
from sluice.runtime import Runtime
from sluice.streaming import StreamResponse, StreamTicket, open_stream


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "invalid_request_error",
        f"the request body exceeds {limit} bytes",
        fields={"param": None, "code": "body_too_large"},
    )


def _already_answered() -> Response:
    """A reconnect to /chat-stream: 204, which ends an EventSource for good.

    Every event of a /chat-stream answer has an id, from the first on, so only a client
    that got (part of) an answer sends ``Last-Event-ID``: the answer it got, whole or cut,
    cannot be resumed, and running the prompt again would be another answer, each
    reconnect a new completion. A stream that never sent an event (a drain's reconnect
    hint has no id) is reconnected without the header and gets its answer.
    """
    return Response(status_code=204, headers={"cache-control": "no-store"})


def build_router(runtime: Runtime) -> APIRouter:
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
        response = await proxy.send(payload, stream=False)
        try:
            raw = await response.read()
        except UpstreamError as exc:
            raise proxy.failure(exc) from None
        finally:
            await response.close()
        try:
            usage = json.loads(raw).get("usage") or {}
        except (ValueError, AttributeError):
            usage = {}
        proxy.account(
            request,
            model,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
        return Response(raw, media_type="application/json")

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
        try:
            response = await proxy.send(payload, stream=True)
            chunks = response.chunks()
            try:
                first = await first_chunk(chunks)
            except UpstreamError as exc:
                await response.close()
                raise proxy.failure(exc) from None
            if first is None:
                await response.close()
                raise proxy.failure(UpstreamError("reset", "empty body"))
        except BaseException:
            ticket.release()
            raise
        events: AsyncIterator[Event | bytes] = (
            relay.passthrough(first, chunks, response)
            if passthrough
            else relay.deltas(first, chunks, response)
        )
        # An answer cannot be resumed elsewhere: on drain it may finish within the window.
        return ticket.response(events, fmt, on_end=[relay.finish], drain="finish")

    return router
