"""The streaming response every Sluice stream goes through, once it is let in
(:mod:`sluice.admission` decides that, and holds its cap slot).

One task pumps the producer's events to the client; beside it a listener waits for the
client's ``http.disconnect`` and, on SSE, a heartbeat task writes a comment after
``heartbeat_interval`` seconds of silence. Whichever ends first decides the end reason:

* the producer finished            -> ``completed``
* the client went away             -> ``client_disconnect`` (the producer is cancelled at once)
* one write blocked too long       -> ``send_timeout`` (a client that stopped reading)
* the producer raised              -> ``error`` (SSE/NDJSON get a last ``error`` event)
* the worker is draining           -> ``drain`` (SSE/NDJSON: a ``reconnect`` event, then a
                                      clean close; text: the connection is dropped, so no
                                      client takes a part for the whole answer)
* the server cancelled the response -> ``cancelled`` (uvicorn, past its graceful timeout)

The producer generator is always closed (its ``finally`` runs) before the response
returns, and the end is recorded (metrics, log, ``on_end`` callbacks, where cap slots are
released) exactly once, in the outermost ``finally``, however the response ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from sluice.drain import DrainPolicy
from sluice.events import Event
from sluice.formats import HEARTBEAT, StreamFormat, encode
from sluice.logs import stream_cut_var
from sluice.request_context import body_send, request_info, route_template
from sluice.timers import StallTimer

if TYPE_CHECKING:
    from sluice.runtime import Runtime
    from sluice.settings import CoreSettings

log = logging.getLogger("sluice.stream")


class EndReason(enum.StrEnum):
    COMPLETED = "completed"
    CLIENT_DISCONNECT = "client_disconnect"
    SEND_TIMEOUT = "send_timeout"
    ERROR = "error"
    DRAIN = "drain"
    CANCELLED = "cancelled"  # the server cancelled the response (uvicorn, at shutdown)


class StreamError(Exception):
    """Raised by a producer to end its stream as failed (reason ``error``).

    ``last`` replaces the core's generic ``error`` event (e.g. a proxy's own error frame);
    ``abort=True`` sends nothing more and drops the connection mid-body, as a crashed
    server would (a fault-injecting test upstream's reset).
    """

    def __init__(
        self, message: str, last: Event | bytes | None = None, abort: bool = False
    ) -> None:
        super().__init__(message)
        self.last = last
        self.abort = abort


class _SendWatchdog:
    """Notices a write that blocks longer than the send timeout (a client that stopped
    reading): one :class:`~sluice.timers.StallTimer` per stream, each write a wait on it.
    Writes may overlap (the pump's and the heartbeat's): the wait is the oldest one's."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.stalled: asyncio.Future[None] = loop.create_future()
        self._time = loop.time
        self.last_write = loop.time()
        self._in_flight = 0
        self._timer = StallTimer(timeout, self._stalled)

    async def send(self, send: Send, message: Message) -> None:
        """One write, watched (the pump's per-chunk path: kept to one call)."""
        if self._in_flight == 0:
            self._timer.wait_began()
        self._in_flight += 1
        try:
            await send(message)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._timer.wait_ended()
                self.last_write = self._time()

    def _stalled(self) -> None:
        if not self.stalled.done():
            self.stalled.set_result(None)

    def stop(self) -> None:
        self._timer.stop()
        if not self.stalled.done():
            self.stalled.cancel()


EndCallback = Callable[[EndReason], None]

STREAM_HEADERS = {
    "cache-control": "no-cache, no-transform",
    "x-accel-buffering": "no",  # nginx: never buffer this response, whatever the config
    "x-content-type-options": "nosniff",
}


class StreamResponse(Response):
    def __init__(
        self,
        events: AsyncIterator[Event | bytes],
        fmt: StreamFormat,
        runtime: Runtime[CoreSettings],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        on_end: list[EndCallback] | None = None,
        drain: DrainPolicy = "reconnect",
    ) -> None:
        # Not Response.__init__: it would render an empty body and set Content-Length: 0.
        self.status_code = status_code
        self.media_type = fmt.media_type
        self.background = None
        self.init_headers({**STREAM_HEADERS, **(headers or {})})
        self.events = events
        self.fmt = fmt
        self.runtime = runtime
        self.on_end = list(on_end or ())
        self.drain_policy: DrainPolicy = drain
        self.reason: EndReason | None = None
        self.events_sent = 0
        self.bytes_sent = 0
        self._first_byte: float | None = None
        self._watchdog: _SendWatchdog
        self._failure: StreamError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.runtime.settings
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        route = route_template(scope)
        drain_turn = self.runtime.drain.register(self.drain_policy)
        watchdog = _SendWatchdog(loop, settings.send_timeout)
        self._watchdog = watchdog
        observer = self.runtime.observer
        observer.stream_started(route)
        # Streams can live for hours: say when one opens, not only when it ends.
        if log.isEnabledFor(logging.INFO):
            log.info("stream started", extra={"route": route, "stream_format": self.fmt.value})
        # Cancelled from outside (the server gave up on this response at shutdown) unless a
        # line below says otherwise. The outer ``finally`` records the end exactly once,
        # whatever the inner blocks raise, a CancelledError included.
        reason = EndReason.CANCELLED
        try:
            reason = await self._run(scope, receive, send, drain_turn)
            if self._cut(reason):
                # Returning without the final chunk makes the server drop the connection.
                stream_cut_var.set(True)  # so its "returned without completing" line is ours
                return
            if reason is not EndReason.CLIENT_DISCONNECT and reason is not EndReason.SEND_TIMEOUT:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.send_timeout):
                        await self._finish(body_send(scope, send), reason)
        finally:
            self._record(scope, route, reason, time.perf_counter() - started)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, drain_turn: asyncio.Future[None]
    ) -> EndReason:
        """Start the response and its tasks; the first to end decides the end reason. The
        tasks are cancelled and awaited, and the producer closed, before this returns."""
        loop = asyncio.get_running_loop()
        settings = self.runtime.settings
        watchdog = self._watchdog
        tasks: list[asyncio.Task[None]] = []
        body = body_send(scope, send)  # the start goes through every layer, the body need not
        try:
            start = {"status": self.status_code, "headers": self.raw_headers}
            await self._send(send, {"type": "http.response.start", **start})
            pump = loop.create_task(self._pump(body))
            listener = loop.create_task(_wait_disconnect(receive))
            tasks = [pump, listener]
            heartbeat = None
            if self.fmt is StreamFormat.SSE and settings.heartbeat_interval > 0:
                heartbeat = loop.create_task(self._heartbeat(body, settings.heartbeat_interval))
                tasks.append(heartbeat)
            waiting = [*tasks, drain_turn, watchdog.stalled]
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if watchdog.stalled in done:
                return EndReason.SEND_TIMEOUT
            if pump in done:
                failure = pump.exception() if not pump.cancelled() else None
                if isinstance(failure, StreamError):
                    self._failure = failure
                return _reason_of(pump)
            if listener in done:
                return EndReason.CLIENT_DISCONNECT
            if heartbeat is not None and heartbeat in done:
                return _reason_of(heartbeat)
            return EndReason.DRAIN
        finally:
            watchdog.stop()
            for task in tasks:
                task.cancel()
            try:
                # Wait for the pump: cancelling it throws into the producer, whose finally
                # runs now.
                await asyncio.gather(*tasks, return_exceptions=True)
                await _close(self.events)
            finally:
                self.runtime.drain.unregister(drain_turn)

    def _cut(self, reason: EndReason) -> bool:
        """Whether this stream ends by dropping its connection rather than closing cleanly.

        A producer may ask for it (``StreamError(abort=True)``). A drain cuts what a
        reconnect cannot continue: a text stream (plain text has no reconnect hint) and a
        ``finish`` stream (a finite answer, e.g. a completion, that had the whole window and
        did not end in it). A clean end, or a hint inviting a reconnect that starts nothing
        where this left off, would let a client take the part it got for the whole answer.
        """
        if self._failure is not None and self._failure.abort:
            return True
        if reason is not EndReason.DRAIN:
            return False
        return self.fmt is StreamFormat.TEXT or self.drain_policy == "finish"

    async def _pump(self, send: Send) -> None:
        fmt = self.fmt
        watched = self._watchdog.send
        async for item in self.events:
            body = item if type(item) is bytes else encode(item, fmt)  # type: ignore[arg-type]
            await watched(send, {"type": "http.response.body", "body": body, "more_body": True})
            self.events_sent += 1
            self.bytes_sent += len(body)
            if self._first_byte is None:
                self._first_byte = time.perf_counter()

    async def _heartbeat(self, send: Send, interval: float) -> None:
        loop = asyncio.get_running_loop()
        ping = {"type": "http.response.body", "body": HEARTBEAT, "more_body": True}
        while True:
            wait = self._watchdog.last_write + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await self._send(send, ping)

    async def _send(self, send: Send, message: Message) -> None:
        """One write, watched: the watchdog ends the stream if it blocks too long."""
        await self._watchdog.send(send, message)
        body = message.get("body")
        if body:
            self.bytes_sent += len(body)
            if self._first_byte is None:
                self._first_byte = time.perf_counter()

    async def _finish(self, send: Send, reason: EndReason) -> None:
        last: Event | bytes | None = None
        if reason is EndReason.DRAIN and self.fmt is not StreamFormat.TEXT:
            last = reconnect_hint(self.runtime.settings.reconnect_retry_ms)
        elif reason is EndReason.ERROR and self._failure is not None:
            last = self._failure.last
        elif reason is EndReason.ERROR and self.fmt is not StreamFormat.TEXT:
            last = Event(
                data={"type": "internal_error", "message": "the stream failed"}, event="error"
            )
        if last is not None:
            body = last if isinstance(last, bytes) else encode(last, self.fmt)
            await self._send(send, {"type": "http.response.body", "body": body, "more_body": True})
        await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    def _record(self, scope: Scope, route: str, reason: EndReason, duration: float) -> None:
        self.reason = reason
        info = request_info(scope)
        fields: dict[str, Any] = {
            "stream_format": self.fmt.value,
            "stream_end": reason.value,
            "stream_events": self.events_sent,
        }
        if info is not None:
            info.stream.update(fields)
            info.bytes_sent += self.bytes_sent  # sent past the access log's own counting
            ttfb = None if self._first_byte is None else self._first_byte - info.started
        else:
            ttfb = None
        self.runtime.observer.stream_ended(route, reason.value, duration, self.events_sent, ttfb)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stream ended", extra={"route": route, **fields})
        for callback in self.on_end:
            try:
                callback(reason)
            except Exception:
                log.exception("stream end callback failed")


def _reason_of(task: asyncio.Task[None]) -> EndReason:
    if task.cancelled():
        return EndReason.ERROR
    exc = task.exception()
    if exc is None:
        return EndReason.COMPLETED
    if isinstance(exc, StreamError):
        log.warning("stream failed: %s", exc)
        return EndReason.ERROR
    log.error("stream producer failed", exc_info=exc)
    return EndReason.ERROR


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _close(events: AsyncIterator[Event | bytes]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("closing the stream producer failed")


def reconnect_hint(retry_ms: int, reason: str = "drain") -> Event:
    """ "Come back in ``retry_ms``": a drained stream's last event, or the whole answer an
    EventSource gets when its stream is refused for now (``reason``: drain, server_full,
    unavailable)."""
    return Event(data={"reason": reason, "retry_ms": retry_ms}, event="reconnect", retry=retry_ms)
