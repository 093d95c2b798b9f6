"""JSON errors: one body shape for every failure of every service,
``{"error": {"type", "message", "param", "code"}}``: OpenAI's, so its SDKs read ``code``
on every route (``code`` is the type unless the error names a more precise one)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sluice.request_context import REQUEST_ID_HEADER, request_info

log = logging.getLogger("sluice.errors")

_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    """Raise anywhere in a request to answer with a JSON error."""

    def __init__(
        self,
        status: int,
        type: str | None = None,
        message: str = "",
        headers: Mapping[str, str] | None = None,
        details: Any = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type or _TYPES.get(status, "error")
        self.message = message
        self.headers = dict(headers or {})
        self.details = details
        self.fields = dict(fields or {})  # more members of the error object (OpenAI: param, code)

    def response(self) -> Response:
        return error_response(
            self.status, self.type, self.message, self.headers, self.details, self.fields
        )


def error_response(
    status: int,
    type: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Any = None,
    fields: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body = error_body(type, message, fields)
    if details is not None:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def error_body(
    type: str, message: str, fields: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """``{"error": {...}}``, the one shape: for answers built outside a response class too."""
    error: dict[str, Any] = {"type": type, "message": message, "param": None, "code": type}
    if fields:
        error.update(fields)
    return {"error": error}


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(
        exc.status_code,
        _TYPES.get(exc.status_code, "error"),
        str(exc.detail),
        exc.headers,
    )


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_response(422, "validation_error", f"invalid request: {summary}", None, details)


async def _unhandled(request: Request, exc: Exception) -> Response:
    # Starlette's outermost middleware sends this, after the request middleware is done:
    # the request id comes from the scope, where that middleware left it.
    info = request_info(request.scope)
    request_id = info.request_id if info is not None else None
    extra = {"request_id": request_id} if request_id else None
    log.exception("unhandled error", exc_info=exc, extra=extra)
    headers = {REQUEST_ID_HEADER.decode(): request_id} if request_id else None
    return error_response(500, "internal_error", "internal server error", headers)


def redis_failed(exc: Exception) -> ApiError:
    """What a request that Redis failed answers: 503 ``unavailable``, ``Retry-After: 1``
    (see :func:`sluice.admission.redis_refusal`, which answers a browser's stream)."""
    log.warning("redis failed: %s", type(exc).__name__)
    return ApiError(
        503,
        "unavailable",
        f"Redis, where limits and shared state live, failed: {type(exc).__name__}",
        {"Retry-After": "1"},
    )


def install_error_handlers(
    app: FastAPI, redis_error: Callable[[Request, Exception], Awaitable[Response]]
) -> None:
    """Every failure in one JSON shape; a Redis failure through ``redis_error``."""
    app.add_exception_handler(RedisError, redis_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
