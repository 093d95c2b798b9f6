"""Forwarding to the fleet: routing a request to the deployments that serve its model,
its attempts (failover before the first byte, :mod:`chat_proxy.attempts`), the model
list, and the accounting of an answer's tokens.

The caller's key never leaves; each deployment gets its own. What happens once a
stream's first token came is :mod:`chat_proxy.relay`'s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request

from sluice.caller import caller_key
from sluice.errors import ApiError
from sluice.logs import request_id_var
from sluice.request_context import request_info
from sluice.runtime import Runtime
from sluice_services.chat_proxy.attempts import AttemptFailed, Outcome, Try, attempt
from sluice_services.chat_proxy.balancer import pick
from sluice_services.chat_proxy.endpoints import Endpoint, Endpoints
from sluice_services.chat_proxy.fleet import Deployment, RouteOptions
from sluice_services.chat_proxy.metrics import (
    TOKENS,
    UPSTREAM_ERRORS,
    UPSTREAM_REQUESTS,
    UPSTREAM_TTFT,
    KnownModels,
)
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.tokens import TokenBudget
from sluice_services.chat_proxy.upstream import UpstreamError, UpstreamResponse, first_chunk

log = logging.getLogger("chat_proxy")

T = TypeVar("T")

# An error answer's body is read only for its message: this much of it, at most.
ERROR_BODY_BYTES = 64 * 1024
# GET /v1/models asks every catch-all deployment, each within this long.
MODELS_TIMEOUT = 5.0


@dataclass(slots=True)
class Started:
    """A stream's upstream response, read up to its first chunk that says something."""

    response: UpstreamResponse
    chunks: AsyncIterator[bytes]
    first: bytes


class ChatProxy:
    def __init__(self, runtime: Runtime[ChatSettings]) -> None:
        settings = runtime.settings
        self.settings = settings
        self.service = settings.service_name
        self.fleet = settings.fleet
        self.endpoints = Endpoints(self.fleet, settings)
        configured = [settings.chat_models, settings.chat_default_model, *self.fleet.model_names()]
        self.models = KnownModels(",".join(configured))
        self.tokens = TokenBudget(runtime, settings.chat_token_limit)
        routing = self.fleet.routing
        self.deadline = routing.deadline or settings.upstream_read_timeout
        self._turns = itertools.count() if routing.balance == "round_robin" else None
        runtime.readiness.append(self._ready)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """The endpoints' pools live as long as the worker."""
        await self.endpoints.start()
        await self._learn_models()
        try:
            yield
        finally:
            await self.endpoints.aclose()

    async def _ready(self) -> str | None:
        return self.endpoints.problem()

    async def _learn_models(self) -> None:
        """The catch-all deployments' models, as metric labels."""
        lists = await asyncio.gather(
            *(self._models_of(d) for d in self.fleet.deployments if d.models is None)
        )
        for entries in lists:
            if entries is not None:
                self.models.add([str(entry["id"]) for entry in entries])

    def route(self, model: str) -> tuple[list[Endpoint], RouteOptions]:
        """The endpoints that serve ``model`` and its route's options; 404 when none does."""
        deployments = self.fleet.serving(model)
        if not deployments:
            raise ApiError(
                404,
                "invalid_request_error",
                f"the model {model!r} does not exist or is not served here",
                fields={"param": "model", "code": "model_not_found"},
            )
        endpoints = [e for d in deployments for e in self.endpoints.of(d)]
        return endpoints, self.fleet.options(model)

    def headers(self, endpoint: Endpoint, accept: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": accept, **endpoint.auth}
        request_id = request_id_var.get()
        if request_id:
            headers["x-request-id"] = request_id
        return headers

    async def start_stream(
        self, path: str, payload: Mapping[str, Any], model: str
    ) -> Outcome[Started]:
        """The stream, on the first endpoint that gets to its first token in time."""
        candidates, options = self.route(model)
        first_token = options.first_token_timeout

        async def try_one(endpoint: Endpoint, left: float) -> Started:
            limit = min(left, first_token) if first_token else left
            body = _body(payload, endpoint.deployment, model)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(limit):
                    response = await self._post(endpoint, path, body, "text/event-stream")
                    chunks = response.chunks()
                    try:
                        first = await first_chunk(chunks)
                        if first is None:
                            raise UpstreamError("reset", "empty body")
                    except BaseException:
                        await response.close()
                        raise
            except TimeoutError:
                if first_token and limit == first_token:
                    message = f"no first token in {first_token} s"
                    raise _timed_out(
                        endpoint, "first_token_timeout", message, self.service
                    ) from None
                raise _timed_out(
                    endpoint, "timeout", "no first token in time", self.service
                ) from None
            except UpstreamError as exc:
                raise self._transport(endpoint, exc) from None
            took = time.perf_counter() - started
            endpoint.took(took)
            UPSTREAM_TTFT.labels(self.service, endpoint.name).observe(took)
            return Started(response, chunks, first)

        return await self._attempt(candidates, try_one, model)

    async def complete(self, path: str, payload: Mapping[str, Any], model: str) -> bytes:
        """A whole (not streamed) answer, failed over until its response's headers came.

        Its reading is bounded by the read timeout, not by the deadline (a long answer is
        not a failure); a failure once a 200 came is not retried (the model may have run).
        """
        candidates, _ = self.route(model)

        async def try_one(endpoint: Endpoint, left: float) -> bytes:
            body = _body(payload, endpoint.deployment, model)
            try:
                response = await self._post(endpoint, path, body, "application/json")
            except UpstreamError as exc:
                raise self._transport(endpoint, exc) from None
            try:
                return await response.read()
            except UpstreamError as exc:
                failure = self.failure(endpoint.name, exc)
                raise AttemptFailed(exc.kind, failure, retryable=False) from None
            finally:
                await response.close()

        outcome: Outcome[bytes] = await self._attempt(candidates, try_one, model)
        outcome.lease.release()  # (the answer is read: its slot is free)
        return outcome.value

    async def _attempt(self, candidates: list[Endpoint], try_one: Try[T], model: str) -> Outcome[T]:
        return await attempt(
            candidates,
            try_one,
            attempts=self.fleet.routing.attempts,
            deadline=self.deadline,
            model=model,
            service=self.service,
            turns=self._turns,
        )

    async def _post(
        self, endpoint: Endpoint, path: str, body: bytes, accept: str
    ) -> UpstreamResponse:
        """The response's head when it is a 200; AttemptFailed for any other status."""
        response = await endpoint.upstream.request(
            "POST", path, body, self.headers(endpoint, accept)
        )
        status = response.status
        UPSTREAM_REQUESTS.labels(self.service, endpoint.name, str(status)).inc()
        if status == 200:
            return response
        try:
            raw = await response.read(ERROR_BODY_BYTES)
        except UpstreamError:  # (past the bound too: the message is then the status's)
            raw = b""
        finally:
            await response.close()
        UPSTREAM_ERRORS.labels(self.service, endpoint.name, "status").inc()
        retry_after = response.header("retry-after")
        error = _status_error(status, raw, retry_after)
        if status == 429:
            return_after = _seconds(retry_after)
            raise AttemptFailed("status_429", error, retryable=True, retry_after=return_after)
        if status in (401, 403):
            raise AttemptFailed("status_auth", error, retryable=True)
        if status >= 500:
            raise AttemptFailed("status_5xx", error, retryable=True)
        if 300 <= status < 400:
            raise AttemptFailed("protocol", error, retryable=True)
        raise AttemptFailed("status_4xx", error, retryable=False)  # the request's own fault

    def _transport(self, endpoint: Endpoint, exc: UpstreamError) -> AttemptFailed:
        return AttemptFailed(exc.kind, self.failure(endpoint.name, exc), retryable=True)

    async def model_list(self) -> dict[str, Any]:
        """The union of what the fleet serves: the names the fleet file lists, and what
        each catch-all deployment's own ``/models`` says."""
        named = self.fleet.model_names()
        catch_alls = [d for d in self.fleet.deployments if d.models is None]
        lists = await asyncio.gather(*(self._models_of(d) for d in catch_alls))
        if catch_alls and not named and all(entries is None for entries in lists):
            raise ApiError(
                502,
                "upstream_error",
                "no model server answered its model list",
                fields={"param": None, "code": "upstream_models"},
            )
        seen: dict[str, dict[str, Any]] = {}
        for name in named:
            seen[name] = {"id": name, "object": "model", "created": 0, "owned_by": "sluice"}
        for entries in lists:
            for entry in entries or ():
                seen.setdefault(str(entry["id"]), entry)
        return {"object": "list", "data": list(seen.values())}

    async def _models_of(self, deployment: Deployment) -> list[dict[str, Any]] | None:
        """A deployment's ``/models`` entries (objects with a string ``id``), or None."""
        endpoint = pick(self.endpoints.of(deployment), time.monotonic())
        if endpoint is None:
            return None
        try:
            async with asyncio.timeout(MODELS_TIMEOUT):
                response = await endpoint.upstream.request(
                    "GET", "/models", None, self.headers(endpoint, "application/json")
                )
                try:
                    body = await response.read()
                finally:
                    await response.close()
            UPSTREAM_REQUESTS.labels(self.service, endpoint.name, str(response.status)).inc()
            if response.status != 200:
                raise ValueError(f"it answered {response.status}")
            data = json.loads(body)["data"]
            if not isinstance(data, list):
                raise TypeError("its data is not a list")
            return [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
        except (UpstreamError, TimeoutError, ValueError, KeyError, TypeError, RecursionError) as e:
            log.warning(
                "could not list an upstream's models",
                extra={"upstream": deployment.name, "address": endpoint.address, "error": str(e)},
            )
            return None

    def failure(self, upstream: str, exc: UpstreamError) -> ApiError:
        UPSTREAM_ERRORS.labels(self.service, upstream, exc.kind).inc()
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

    def account(
        self, request: Request, model: str, prompt: int, completion: int, *, estimated: bool = False
    ) -> None:
        """Count an answer's tokens: metrics, the key's budget, its log line (which says
        when the figures are the proxy's own estimate: no usage came)."""
        label = self.models.label(model)
        if prompt:
            TOKENS.labels(self.service, label, "prompt").inc(prompt)
        if completion:
            TOKENS.labels(self.service, label, "completion").inc(completion)
        self.tokens.charge(caller_key(request), prompt + completion)
        info = request_info(request.scope)
        if info is not None:
            figures: dict[str, Any] = {
                "model": label,
                "tokens_prompt": prompt,
                "tokens_completion": completion,
            }
            if estimated:
                figures["tokens_estimated"] = True
            info.stream.update(figures)


def _body(payload: Mapping[str, Any], deployment: Deployment, model: str) -> bytes:
    """The request as this deployment gets it: its own name for the model (an alias)."""
    name = deployment.upstream_model(model) or model
    if name != model:
        payload = {**payload, "model": name}
    return json.dumps(payload, separators=(",", ":")).encode()


def _timed_out(endpoint: Endpoint, reason: str, message: str, service: str) -> AttemptFailed:
    UPSTREAM_ERRORS.labels(service, endpoint.name, "timeout").inc()
    error = ApiError(
        504,
        "upstream_timeout",
        f"the model server timed out: {message}",
        fields={"param": None, "code": "upstream_timeout"},
    )
    return AttemptFailed(reason, error, retryable=True)


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is not taken: None)."""
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


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
