"""Pure ASGI middleware: a request id on every response and log line, one log line a request.

Pure ASGI (not ``BaseHTTPMiddleware``) so a streaming body passes through untouched.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.logs import request_id_var

log = logging.getLogger("sluice.access")

REQUEST_ID_HEADER = b"x-request-id"
# Accept a caller's id only if it cannot smuggle anything into headers or logs.
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(slots=True)
class RequestInfo:
    """What one request did; filled in by the middleware, the core and the route."""

    request_id: str
    started: float
    status: int = 0
    bytes_sent: int = 0
    key_id: str | None = None
    stream: dict[str, Any] = field(default_factory=dict)


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label), or ``<unmatched>``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


BODY_SEND = "sluice.body_send"


def body_send(scope: Scope, send: Send) -> Send:
    """Where a stream sends its body chunks: this middleware's own ``send``, or the server's
    when nothing but Starlette's error middleware is outside it (:class:`sluice.app.SluiceApp`).

    The layers between the server and a route (Starlette's error and exception middleware,
    FastAPI's route wrapper) only look at a response's start, yet wrap every message; on
    streams of many small chunks those wrappers cost ~8% of a token proxy's CPU. A stream
    sends its start through every layer and its body chunks here, counting their bytes
    itself. Middleware that must see stream bodies goes outside this one (added after
    ``create_app``), and then gets them. Outside a Sluice app this is ``send`` itself.
    """
    published: Send | None = scope.get(BODY_SEND)
    return published if published is not None else send


def request_info(scope: Scope) -> RequestInfo | None:
    info = scope.get("state", {}).get("sluice_info")
    return info if isinstance(info, RequestInfo) else None


CLOSE = (b"connection", b"close")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        on_done: Callable[[str, str, int, float], None],
        closing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.on_done = on_done  # (method, route, status, seconds): the request metrics
        # True while the worker drains: each response then ends its keep-alive connection,
        # so the proxy in front closes it itself instead of racing the worker's close.
        self.closing = closing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or os.urandom(16).hex()  # uuid4's entropy, cheaper
        info = RequestInfo(request_id=request_id, started=time.perf_counter())
        scope.setdefault("state", {})["sluice_info"] = info
        scope.setdefault(BODY_SEND, send)  # (the server's, when the app published it)
        token = request_id_var.set(request_id)
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                headers = [*message.get("headers", ()), header]
                if self.closing():
                    headers.append(CLOSE)
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                info.bytes_sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if info.status == 0:
                info.status = 500  # what Starlette's outermost middleware answers
            raise
        finally:
            duration = time.perf_counter() - info.started
            self.on_done(scope["method"], route_template(scope), info.status, duration)
            if log.isEnabledFor(logging.INFO):
                _log_request(scope, info, duration)
            request_id_var.reset(token)
            # The server's send refers back to the scope: leaving it there would make every
            # request a reference cycle, freed only by the garbage collector.
            scope.pop(BODY_SEND, None)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            return value.decode() if _VALID_ID.match(value) else None
    return None


def _log_request(scope: Scope, info: RequestInfo, duration: float) -> None:
    client = scope.get("client")
    fields: dict[str, Any] = {
        "event": "request",
        "method": scope["method"],
        "path": scope["path"],  # never the query string: it may carry a token
        "route": route_template(scope),
        "status": info.status,
        "duration_ms": round(duration * 1000, 2),
        "bytes": info.bytes_sent,
        "client": client[0] if client else None,
    }
    if info.key_id:
        fields["key_id"] = info.key_id
    fields.update(info.stream)
    log.info("request", extra=fields)
