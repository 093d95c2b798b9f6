"""Forwarding to the upstream: sending a completion, listing models, the failures before
the first byte, and the accounting of a finished completion's tokens.

The caller's key never leaves; the upstream gets its own. What happens once the upstream's
stream has started is :mod:`chat_proxy.relay`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from sluice.caller import caller_key
from sluice.errors import ApiError
from sluice.logs import request_id_var
from sluice.request_context import request_info
from sluice.runtime import Runtime
from sluice_services.chat_proxy.metrics import (
    TOKENS,
    UPSTREAM_ERRORS,
    UPSTREAM_REQUESTS,
    KnownModels,
)
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.tokens import TokenBudget
from sluice_services.chat_proxy.upstream import (
    Upstream,
    UpstreamError,
    UpstreamResponse,
    make_upstream,
)

log = logging.getLogger("chat_proxy")

# An error answer's body is read only for its message: this much of it, at most.
ERROR_BODY_BYTES = 64 * 1024


class ChatProxy:
    def __init__(self, runtime: Runtime[ChatSettings]) -> None:
        settings = runtime.settings
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
