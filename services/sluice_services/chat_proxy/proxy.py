"""Forwarding to the upstream: the call, its failures, and the relay of a token stream.

The relay is pass-through: every upstream SSE event is forwarded byte for byte the moment
it is complete; it is only looked into for what Sluice needs (token timing, usage,
errors, the end). The caller's key never leaves; the upstream gets its own.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from sluice.errors import ApiError
from sluice.events import Event
from sluice.limits import caller_key
from sluice.logs import request_id_var
from sluice.request_context import request_info
from sluice.runtime import Runtime
from sluice.streaming import EndReason, StreamError
from sluice_services.chat_proxy.frames import FrameTooLarge, SseSplitter, data_of
from sluice_services.chat_proxy.metrics import (
    INTER_TOKEN,
    ITL_BUCKETS,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    UPSTREAM_ERRORS,
    UPSTREAM_REQUESTS,
    KnownModels,
    StreamHistogram,
)
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.tokens import TokenBudget
from sluice_services.chat_proxy.upstream import (
    Upstream,
    UpstreamError,
    UpstreamResponse,
    make_upstream,
    read_to_end,
)
from sluice_services.chat_proxy.usage import BadUsage, usage_counts

log = logging.getLogger("chat_proxy")

# A delta with text: a JSON string value that is not empty ("content":null is no token).
_TEXT_DELTA = re.compile(rb'"content":\s*"[^"]')
_USAGE = re.compile(rb'"usage":\s*\{')  # json.dumps' default separators have a space
# An error answer's body is read only for its message: this much of it, at most.
ERROR_BODY_BYTES = 64 * 1024


class ChatProxy:
    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        assert isinstance(settings, ChatSettings)
        self.settings = settings
        self.service = settings.service_name
        self.models = KnownModels(settings.chat_models + "," + settings.chat_default_model)
        self.tokens = TokenBudget(runtime, settings.chat_token_limit)
        self._upstream: Upstream | None = None
        key = settings.upstream_api_key
        self._auth = {"authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    @property
    def upstream(self) -> Upstream:
        assert self._upstream is not None, "the upstream pool opens at startup"
        return self._upstream

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """One connection pool per worker, for the worker's life."""
        s = self.settings
        self._upstream = make_upstream(s)
        await self._learn_models()
        try:
            yield
        finally:
            await self._upstream.aclose()

    async def _learn_models(self) -> None:
        try:
            response = await self.upstream.request("GET", "/models", None, self._auth)
            try:
                body = await response.read()
            finally:
                await response.close()
            if response.status == 200:
                self.models.add([m["id"] for m in json.loads(body)["data"]])
        except (UpstreamError, ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("could not list upstream models: %s", exc)

    def headers(self, accept: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": accept, **self._auth}
        request_id = request_id_var.get()
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    async def send(self, payload: Mapping[str, Any], stream: bool) -> UpstreamResponse:
        """POST the completion upstream; ApiError (502/504/4xx) when it fails before a byte."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        accept = "text/event-stream" if stream else "application/json"
        try:
            response = await self.upstream.request(
                "POST", "/chat/completions", body, self.headers(accept)
            )
        except UpstreamError as exc:
            raise self.failure(exc) from None
        UPSTREAM_REQUESTS.labels(self.service, str(response.status)).inc()
        if response.status != 200:
            try:
                raw = await response.read(ERROR_BODY_BYTES)
            except UpstreamError:  # (past the bound too: the message is then the status's)
                raw = b""
            finally:
                await response.close()
            UPSTREAM_ERRORS.labels(self.service, "status").inc()
            raise _status_error(response.status, raw, response.header("retry-after"))
        return response

    async def get(self, path: str) -> tuple[int, bytes]:
        try:
            response = await self.upstream.request(
                "GET", path, None, self.headers("application/json")
            )
            try:
                body = await response.read()
            finally:
                await response.close()
        except UpstreamError as exc:
            raise self.failure(exc) from None
        UPSTREAM_REQUESTS.labels(self.service, str(response.status)).inc()
        return response.status, body

    def failure(self, exc: UpstreamError) -> ApiError:
        UPSTREAM_ERRORS.labels(self.service, exc.kind).inc()
        if exc.kind == "timeout":
            return ApiError(
                504,
                "upstream_timeout",
                f"the model server timed out: {exc}",
                fields={"param": None, "code": "upstream_timeout"},
            )
        return ApiError(
            502,
            "upstream_unavailable",
            f"the model server failed: {exc}",
            fields={"param": None, "code": f"upstream_{exc.kind}"},
        )

    def account(self, request: Request, model: str, prompt: int, completion: int) -> None:
        """Count a finished completion's tokens: metrics, the key's budget, its log line."""
        label = self.models.label(model)
        if prompt:
            TOKENS.labels(self.service, label, "prompt").inc(prompt)
        if completion:
            TOKENS.labels(self.service, label, "completion").inc(completion)
        self.tokens.charge(caller_key(request), prompt + completion)
        info = request_info(request.scope)
        if info is not None:
            info.stream.update(
                {"model": label, "tokens_prompt": prompt, "tokens_completion": completion}
            )


def _status_error(status: int, raw: bytes, retry_after: str | None) -> ApiError:
    message = f"the model server answered {status}"
    if 300 <= status < 400:  # never followed: a redirect may re-send the prompt elsewhere
        message = f"{message} (a redirect, not followed)"
    try:
        upstream_error = json.loads(raw)["error"]
        message = f"{message}: {upstream_error['message']}"
    except (ValueError, KeyError, TypeError, RecursionError):
        upstream_error = {}
    if not isinstance(upstream_error, dict):
        upstream_error = {}
    fields = {"param": upstream_error.get("param"), "code": upstream_error.get("code")}
    if status in (400, 404, 409, 413, 422):
        return ApiError(status, "invalid_request_error", message, fields=fields)
    if status == 429:
        return ApiError(
            429,
            "rate_limit_error",
            message,
            fields=fields,
            headers={"Retry-After": retry_after or "1"},
        )
    if status in (401, 403):
        message = f"the model server refused this proxy's credentials ({status})"
    return ApiError(
        502, "upstream_error", message, fields={"param": None, "code": f"upstream_{status}"}
    )


def failure_object(kind: str, message: str) -> dict[str, Any]:
    """The OpenAI error object of a mid-stream failure the proxy noticed (reset, stall, ...)."""
    return {"message": message, "type": "upstream_error", "param": None, "code": f"upstream_{kind}"}


def error_frame(kind: str, message: str) -> bytes:
    body = {"error": failure_object(kind, message)}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


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
        self, proxy: ChatProxy, request: Request, model: str, client_wants_usage: bool
    ) -> None:
        self.proxy = proxy
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
                        UPSTREAM_ERRORS.labels(self.proxy.service, "error_event").inc()
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
                        if isinstance(content, str) and content:
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

    async def _next(self, chunks: AsyncIterator[bytes]) -> bytes:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            raise self._fail("reset", "the model server closed the stream before [DONE]") from None
        except UpstreamError as exc:
            raise self._fail(exc.kind, str(exc)) from None

    def _fail(self, kind: str, message: str) -> UpstreamFailure:
        UPSTREAM_ERRORS.labels(self.proxy.service, kind).inc()
        return UpstreamFailure(
            message, failure_object(kind, message), last=error_frame(kind, message)
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
            if _TEXT_DELTA.search(chunk) is not None:
                self._token()
            return chunk
        return self._inspect(splitter.feed(chunk))

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
                UPSTREAM_ERRORS.labels(self.proxy.service, "error_event").inc()
                self.ended = self.upstream_failed = True
                out.append(frame)
                break
            if _TEXT_DELTA.search(payload) is not None:
                self._token()
            if _USAGE.search(payload) is not None:
                message = _json_object(payload)
                if message is not None and message.get("usage"):
                    self.usage = message["usage"]  # (checked when it is counted: finish)
                if not self.client_wants_usage and b'"choices":[]' in payload:
                    continue  # usage was asked for by the proxy, not the client
            out.append(frame)
        return b"".join(out)

    def finish(self, reason: EndReason) -> None:
        self._itl.flush()
        try:
            prompt, completion = usage_counts(self.usage)
        except BadUsage as exc:
            # The tokens went out: what the proxy counted itself is charged.
            log.warning("the model server's usage is not token counts: %s", exc)
            prompt, completion = 0, 0
        self.proxy.account(self.request, self.model, prompt, completion or self.completion)
