"""Whether a stream may start: the drain and the stream caps, and the leave they give.

:func:`open_stream` refuses while the worker drains and takes a cap slot
(:mod:`sluice.caps`), or refuses: 429 when the caller holds its maximum, 503 when the
worker or the service does. A refusal for now (draining, full) answers a browser's
``EventSource`` with a reconnect hint instead (:class:`RefusedForNow`). What it gives is a
:class:`StreamTicket`, which becomes the :class:`~sluice.streaming.StreamResponse` that
releases the slot when the stream ends. :func:`stream` is both steps at once: what a
route that starts its stream at once returns.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from sluice.drain import DrainPolicy
from sluice.errors import ApiError, redis_failed
from sluice.events import Event
from sluice.formats import StreamFormat, encode
from sluice.streaming import STREAM_HEADERS, EndCallback, StreamResponse, reconnect_hint

if TYPE_CHECKING:
    from sluice.caps import Slot
    from sluice.runtime import Runtime
    from sluice.settings import CoreSettings


class StreamTicket:
    """Leave to start one stream: the worker is not draining and a cap slot is held.

    Turn it into the response with :meth:`response`; if the stream never starts (an
    upstream failed first), :meth:`release` gives the slot back. Either way, exactly once.
    """

    def __init__(self, request: Request, runtime: Runtime[CoreSettings], slot: Slot) -> None:
        self.request = request
        self.runtime = runtime
        self.slot: Slot | None = slot

    def release(self) -> None:
        if self.slot is not None:
            self.slot.release()

    def take_slot(self) -> Slot:
        """The cap slot, for work that outlives the response (which then holds none, and
        the taker releases it): a stream's generation that goes on without its client."""
        slot = self.slot
        assert slot is not None, "the slot was taken already"
        self.slot = None
        return slot

    def response(
        self,
        events: AsyncIterator[Event | bytes],
        fmt: StreamFormat,
        *,
        headers: Mapping[str, str] | None = None,
        on_end: list[EndCallback] | None = None,
        drain: DrainPolicy = "reconnect",
    ) -> StreamResponse:
        slot = self.slot
        all_headers = {**self.runtime.auth.renewal(self.request), **(headers or {})}
        callbacks: list[EndCallback] = [*(on_end or ())]
        if slot is not None:
            callbacks.insert(0, lambda _: slot.release())
        return StreamResponse(
            events, fmt, self.runtime, headers=all_headers, on_end=callbacks, drain=drain
        )


class RefusedForNow(ApiError):
    """A stream refused for now (the worker drains, the server is full): the refusal's 503 +
    ``Retry-After``, but to an ``EventSource``, which gives up for good on any answer but a
    200 event stream, a 200 holding only a reconnect hint (and its renewed cookie)."""

    def __init__(
        self,
        refusal: ApiError,
        reason: str,
        retry_ms: int,
        event_source: bool,
        renewal: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            refusal.status, refusal.type, refusal.message, refusal.headers, None, refusal.fields
        )
        self.reason = reason  # the hint's: drain, server_full, unavailable
        self.retry_ms = retry_ms
        self.event_source = event_source
        self.renewal = dict(renewal or {})  # the stream-token cookie, for that reconnect

    def response(self) -> Response:
        if not self.event_source:
            return super().response()
        return Response(
            encode(reconnect_hint(self.retry_ms, self.reason), StreamFormat.SSE),
            media_type="text/event-stream",
            headers={**STREAM_HEADERS, **self.renewal},
        )


async def redis_refusal(request: Request, exc: Exception) -> Response:
    """A request Redis failed (a stream's cap lease, a job's state): 503 ``unavailable``
    with ``Retry-After``, which a client retries; a browser's EventSource, which would give
    up for good on that 503, gets a reconnect hint instead, as for a drain."""
    refusal = redis_failed(exc)
    retry_ms = request.app.state.runtime.settings.reconnect_retry_ms
    retry_ms = max(retry_ms, 1000) + random.randint(0, 1000)  # a crowd does not come back at once
    return _refused_for_now(request, refusal, "unavailable", retry_ms).response()


def _event_source(request: Request) -> bool:
    """A browser's EventSource (or any SSE client): GET, asking for text/event-stream."""
    return request.method == "GET" and "text/event-stream" in request.headers.get("accept", "")


def _refused_for_now(
    request: Request, refusal: ApiError, reason: str, retry_ms: int
) -> RefusedForNow:
    runtime: Runtime[CoreSettings] = request.app.state.runtime
    event_source = _event_source(request)
    renewal = runtime.auth.renewal(request) if event_source else None
    return RefusedForNow(refusal, reason, retry_ms, event_source, renewal)


async def open_stream(request: Request) -> StreamTicket:
    """Leave to start a stream: refused while draining, and a stream-cap slot taken (429 when
    the caller holds its maximum, 503 when the server or service does). Refusals for now
    (drain, full) answer an EventSource with a reconnect hint (see :class:`RefusedForNow`):
    after a full server's ``Retry-After`` plus a random share of it, so a refused crowd does
    not come back at once."""
    runtime: Runtime[CoreSettings] = request.app.state.runtime
    retry_ms = runtime.settings.reconnect_retry_ms
    if runtime.drain.refusing:
        refusal = ApiError(
            503,
            "draining",
            "this server is restarting; reconnect shortly",
            headers={"Retry-After": str(max(1, round(retry_ms / 1000)))},
        )
        raise _refused_for_now(request, refusal, "drain", retry_ms)
    try:
        slot = await runtime.caps.acquire(request)
    except ApiError as exc:
        if exc.type != "server_full":
            raise
        back_off = int(exc.headers.get("Retry-After", "5")) * 1000
        retry_ms = back_off + random.randint(0, back_off)
        raise _refused_for_now(request, exc, "server_full", retry_ms) from None
    return StreamTicket(request, runtime, slot)


async def stream(
    request: Request,
    events: AsyncIterator[Event | bytes],
    fmt: StreamFormat,
    *,
    headers: Mapping[str, str] | None = None,
    on_end: list[EndCallback] | None = None,
    drain: DrainPolicy = "reconnect",
) -> StreamResponse:
    """The response for a stream, once the worker may start one (see :func:`open_stream`).

    The cap slot is released exactly once when the stream ends, however it ends, and a
    browser's stream-token cookie is renewed so its automatic reconnect is let in.
    """
    ticket = await open_stream(request)
    return ticket.response(events, fmt, headers=headers, on_end=on_end, drain=drain)
