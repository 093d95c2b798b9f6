"""The relay of a streamed answer: the upstream's stream, as the client gets it.

The relay is pass-through: every upstream SSE event is forwarded byte for byte the moment
it is complete; it is only looked into for what Sluice needs (token timing, usage,
errors, the end), as its API (:mod:`chat_proxy.apis`) shapes them. ``/chat-stream`` gets
just the text (:meth:`Relay.deltas`). A failure mid-stream ends the stream with an
OpenAI-style error (:class:`UpstreamFailure`). When no usage came (the client left, the
upstream was cut), the key is charged what the relay counted, and the log says so.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from sluice.events import Event
from sluice.request_context import request_info
from sluice.streaming import EndReason, StreamError
from sluice_services.chat_proxy.apis import CHAT, RESPONSE_ENDS, Api
from sluice_services.chat_proxy.attempts import Lease
from sluice_services.chat_proxy.frames import FrameTooLarge, SseSplitter, data_of
from sluice_services.chat_proxy.metrics import (
    INTER_TOKEN,
    ITL_BUCKETS,
    TIME_TO_FIRST_TOKEN,
    UPSTREAM_ERRORS,
    StreamHistogram,
)
from sluice_services.chat_proxy.proxy import ChatProxy
from sluice_services.chat_proxy.upstream import UpstreamError, UpstreamResponse, read_to_end
from sluice_services.chat_proxy.usage import BadUsage, usage_counts

log = logging.getLogger("chat_proxy")

_USAGE = re.compile(rb'"usage":\s*\{')  # json.dumps' default separators have a space


def failure_object(kind: str, message: str) -> dict[str, Any]:
    """The OpenAI error object of a mid-stream failure the proxy noticed (reset, stall, ...)."""
    return {"message": message, "type": "upstream_error", "param": None, "code": f"upstream_{kind}"}


def error_frame(kind: str, message: str, typed: bool = False) -> bytes:
    """The SSE event a stream ends with when the proxy saw it fail."""
    return error_event(failure_object(kind, message), typed)


def error_event(error: dict[str, Any], typed: bool) -> bytes:
    """An OpenAI error object as a stream's last event: the chat form (``data:
    {"error": ...}``), or the Responses API's ``error`` event."""
    if typed:
        event = {
            "type": "error",
            "code": error.get("code"),
            "message": error.get("message"),
            "param": None,
        }
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def _event_name(frame: bytes) -> bytes | None:
    """A frame's ``event:`` name (the Responses API names every event)."""
    if not frame.startswith(b"event:"):
        return None
    line = frame[6 : frame.find(b"\n")]
    return line.strip()


class UpstreamFailure(StreamError):
    """The upstream failed mid-stream: ``last`` is the OpenAI-style ``data:`` error frame
    the pass-through ends with; ``error`` the same error object, for ``/chat-stream``."""

    def __init__(self, message: str, error: dict[str, Any], last: bytes | None = None) -> None:
        super().__init__(message, last=last)
        self.error = error


def _error_object(error: Any) -> dict[str, Any]:
    """An upstream error event's ``error``, as an OpenAI error object whatever it was."""
    if not isinstance(error, dict):
        error = {"message": str(error)[:1000]}
    message = error.get("message")
    return {
        **error,
        "message": message if isinstance(message, str) else "the model server failed",
        "type": error.get("type") or "upstream_error",
        "param": error.get("param"),
        "code": error.get("code") or "upstream_error_event",
    }


def _json_object(payload: bytes) -> dict[str, Any] | None:
    """An upstream event's JSON object, or None when it is anything else."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class Relay:
    """One streamed completion: forwards upstream events, times tokens, counts usage."""

    def __init__(
        self,
        proxy: ChatProxy,
        request: Request,
        model: str,
        client_wants_usage: bool,
        *,
        api: Api = CHAT,
        prompt_estimate: int = 0,
    ) -> None:
        self.proxy = proxy
        self.api = api
        self.token = api.token
        self.prompt_estimate = prompt_estimate
        self.lease: Lease | None = None  # the endpoint's slot, released when the stream ends
        self.upstream = "none"  # the deployment's name, once one answered
        self.request = request
        self.model = model
        self.label = proxy.models.label(model)
        self.client_wants_usage = client_wants_usage
        info = request_info(request.scope)
        self.started = info.started if info is not None else time.perf_counter()
        self.last_token: float | None = None
        self.completion = 0
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.ended = False
        self.upstream_failed = False
        self._ttft = TIME_TO_FIRST_TOKEN.labels(proxy.service, self.label)
        self._itl = StreamHistogram(INTER_TOKEN.labels(proxy.service, self.label), ITL_BUCKETS)

    def attach(self, lease: Lease) -> None:
        """The endpoint the stream runs on: its slot is this stream's until it ends."""
        self.lease = lease
        self.upstream = lease.endpoint.name

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def _token(self) -> None:
        now = time.perf_counter()
        if self.last_token is None:
            self._ttft.observe(now - self.started)
        else:
            self._itl.observe(now - self.last_token)
        self.last_token = now
        self.completion += 1

    async def passthrough(
        self, first: bytes, chunks: AsyncIterator[bytes], response: UpstreamResponse
    ) -> AsyncIterator[bytes]:
        """The upstream's SSE, byte for byte (less a usage chunk the client did not ask for)."""
        splitter = SseSplitter(self.proxy.settings.upstream_max_event_bytes)
        relay = self._relay
        try:
            out = relay(splitter, first)
            if out:
                yield out
            if not self.ended:
                async for chunk in chunks:  # the hot loop: one upstream read, one write
                    out = relay(splitter, chunk)
                    if out:
                        yield out
                    if self.ended:
                        break
                else:
                    raise self._fail("reset", "the model server closed the stream before [DONE]")
            if self.upstream_failed:
                raise StreamError("the model server sent an error event")
            await read_to_end(chunks)  # after [DONE] went out: the connection is kept
        except UpstreamError as exc:
            raise self._fail(exc.kind, str(exc)) from None
        except FrameTooLarge as exc:
            raise self._fail("too_large", str(exc)) from None
        finally:
            await response.close()
            self._release()

    async def deltas(
        self, first: bytes, chunks: AsyncIterator[bytes], response: UpstreamResponse
    ) -> AsyncIterator[Event]:
        """Just the text: each content delta as an event (text, SSE or NDJSON), then ``done``.

        Every event has an id, its number in the answer, so an EventSource's reconnect
        carries ``Last-Event-ID`` (routes.py answers it with 204: an answer is not resumed,
        and not re-run). A failure ends with a ``failed`` event (not ``error``, the name of
        EventSource's own event at every close); in text, as a line of its own. The text
        ends with a newline.
        """
        splitter = SseSplitter(self.proxy.settings.upstream_max_event_bytes)
        chunk = first
        sent = 0  # events sent: the next one's id is sent + 1
        open_line = False  # the text so far does not end with a newline
        try:
            while True:
                try:
                    frames = splitter.feed(chunk)
                except FrameTooLarge as exc:
                    raise self._fail("too_large", str(exc)) from None
                for frame in frames:
                    payload = data_of(frame)
                    if payload is None:
                        continue
                    if payload == b"[DONE]":
                        self.ended = True
                        break
                    message = _json_object(payload)
                    if message is None:
                        raise self._fail(
                            "error_event", "the model server sent an event that is not JSON"
                        )
                    if "error" in message:
                        UPSTREAM_ERRORS.labels(
                            self.proxy.service, self.upstream, "error_event"
                        ).inc()
                        error = _error_object(message["error"])
                        raise UpstreamFailure("upstream error event", error)
                    usage = message.get("usage")
                    if isinstance(usage, dict) and usage:
                        self.usage = usage
                    choices = message.get("choices")
                    for choice in choices if isinstance(choices, list) else ():
                        if not isinstance(choice, dict):
                            continue
                        delta = choice.get("delta")
                        content = delta.get("content") if isinstance(delta, dict) else None
                        if not content and self.token.search(payload) is not None:
                            self._token()  # (reasoning, a tool call: counted, not shown)
                        elif isinstance(content, str) and content:
                            self._token()
                            sent += 1
                            open_line = not content.endswith("\n")
                            yield Event(data={"delta": content}, id=str(sent), text=content)
                        finish_reason = choice.get("finish_reason")
                        if isinstance(finish_reason, str) and finish_reason:
                            self.finish_reason = finish_reason
                if self.ended:
                    yield Event(
                        event="done",
                        id=str(sent + 1),
                        data={"finish_reason": self.finish_reason, "usage": self.usage},
                        text="\n" if open_line else "",
                    )
                    await read_to_end(chunks)
                    return
                chunk = await self._next(chunks)
        except UpstreamFailure as exc:
            said = " ".join(exc.error["message"].split())  # one line, whatever it held
            line = ("\n" if open_line else "") + f"[error: {said}]\n"
            failed = Event(event="failed", id=str(sent + 1), data={"error": exc.error}, text=line)
            raise StreamError(str(exc), last=failed) from None
        finally:
            await response.close()
            self._release()

    async def _next(self, chunks: AsyncIterator[bytes]) -> bytes:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            raise self._fail("reset", "the model server closed the stream before [DONE]") from None
        except UpstreamError as exc:
            raise self._fail(exc.kind, str(exc)) from None

    def _fail(self, kind: str, message: str) -> UpstreamFailure:
        UPSTREAM_ERRORS.labels(self.proxy.service, self.upstream, kind).inc()
        return UpstreamFailure(
            message,
            failure_object(kind, message),
            last=error_frame(kind, message, self.api.typed),
        )

    def _relay(self, splitter: SseSplitter, chunk: bytes) -> bytes:
        """What the client gets of one upstream chunk."""
        # A token stream's usual chunk is one whole one-line JSON event: looked at in place.
        if (
            chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and chunk.startswith(b'data: {"')
            and splitter.idle
            and b'"usage"' not in chunk  # usage (any spacing) is looked into below
            and not chunk.startswith(b'data: {"error"')
        ):
            if self.token.search(chunk) is not None:
                self._token()
            return chunk
        frames = splitter.feed(chunk)
        return self._inspect_typed(frames) if self.api.typed else self._inspect(frames)

    def _inspect(self, frames: list[bytes]) -> bytes:
        out = []
        for frame in frames:
            payload = data_of(frame)
            if payload is None:
                out.append(frame)  # comments, retry hints: forwarded as they are
                continue
            if payload == b"[DONE]":
                self.ended = True
                out.append(frame)
                break
            if payload.startswith(b'{"error"'):
                UPSTREAM_ERRORS.labels(self.proxy.service, self.upstream, "error_event").inc()
                self.ended = self.upstream_failed = True
                out.append(frame)
                break
            if self.token.search(payload) is not None:
                self._token()
            if _USAGE.search(payload) is not None:
                message = _json_object(payload)
                if message is not None and message.get("usage"):
                    self.usage = message["usage"]  # (checked when it is counted: finish)
                if not self.client_wants_usage and b'"choices":[]' in payload:
                    continue  # usage was asked for by the proxy, not the client
            out.append(frame)
        return b"".join(out)

    def _inspect_typed(self, frames: list[bytes]) -> bytes:
        """The Responses API's events: named, JSON, ending with ``response.completed``
        (its usage inside) or an ``error``; no ``[DONE]``."""
        out = []
        for frame in frames:
            payload = data_of(frame)
            out.append(frame)
            if payload is None:
                continue  # comments, retry hints
            if self.token.search(payload) is not None:
                self._token()
                continue
            name = _event_name(frame)
            if name is None or name == b"error" or name in RESPONSE_ENDS:
                message = _json_object(payload)
                kind = message.get("type") if message is not None else None
                name = kind.encode() if isinstance(kind, str) else name
            if name == b"error":
                UPSTREAM_ERRORS.labels(self.proxy.service, self.upstream, "error_event").inc()
                self.ended = self.upstream_failed = True
                break
            if name in RESPONSE_ENDS:
                response = message.get("response") if message is not None else None
                usage = response.get("usage") if isinstance(response, dict) else None
                if isinstance(usage, dict):
                    self.usage = {
                        "prompt_tokens": usage.get("input_tokens"),
                        "completion_tokens": usage.get("output_tokens"),
                    }
                self.ended = True
                if name == b"response.failed":
                    UPSTREAM_ERRORS.labels(self.proxy.service, self.upstream, "error_event").inc()
                    self.upstream_failed = True
                break
        return b"".join(out)

    def finish(self, reason: EndReason) -> None:
        self._release()
        self._itl.flush()
        estimated = self.usage is None  # none came: the client left, or the upstream was cut
        try:
            prompt, completion = usage_counts(self.usage)
        except BadUsage as exc:
            # The tokens went out: what the proxy counted itself is charged.
            log.warning("the model server's usage is not token counts: %s", exc)
            prompt, completion, estimated = 0, 0, True
        if estimated:
            prompt = prompt or self.prompt_estimate
        self.proxy.account(
            self.request, self.model, prompt, completion or self.completion, estimated=estimated
        )
