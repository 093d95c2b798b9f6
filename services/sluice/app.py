"""``create_app``: the one factory helper every service's ``create_app()`` calls.

It wires the core around a service's routers: JSON errors, request ids and access
logs, ``/healthz`` and ``/readyz``, ``/metrics``, and the SIGTERM drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from slowapi.errors import RateLimitExceeded
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sluice.admission import redis_refusal
from sluice.auth import stream_token_router
from sluice.drain import SignalDrain
from sluice.errors import error_response, install_error_handlers
from sluice.handoff import Siblings
from sluice.logs import configure_logging
from sluice.metrics import render
from sluice.request_context import BODY_SEND, RequestContextMiddleware
from sluice.runtime import Runtime
from sluice.settings import CoreSettings
from sluice.summary import summary

log = logging.getLogger("sluice.app")

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns ``None`` when ready, else a short reason (shown on ``/readyz``)."""

Resource = Callable[[FastAPI], AbstractAsyncContextManager[None]]
"""Something a service opens at startup and closes at shutdown (clients, pools)."""

S = TypeVar("S", bound=CoreSettings)

RouterFactory = Callable[[Runtime[S]], APIRouter]
"""Builds a service's routes with the runtime (its limiter decorators need it), typed with
the service's settings: ``def build_router(runtime: Runtime[MySettings]) -> APIRouter``."""


class SluiceApp(FastAPI):
    """FastAPI, but a stream's body chunks go from the route straight to the server.

    Starlette puts its error middleware outside every middleware of the app, and it wraps
    each message sent only to learn whether the response started. When the core's request
    middleware is the outermost of the app's own (nothing was added after ``create_app``),
    the server's ``send`` is published as the body send (``request_context.body_send``):
    the response start still goes through every layer, the error middleware's included."""

    _bodies_to_server = False

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        first: object = self.user_middleware[0].cls if self.user_middleware else None
        self._bodies_to_server = first is RequestContextMiddleware
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        if self._bodies_to_server and scope["type"] == "http":
            scope[BODY_SEND] = send  # (RequestContextMiddleware takes it out at the end)
        await super().__call__(scope, receive, send)


def create_app(
    settings: S,
    *,
    title: str,
    routers: Sequence[RouterFactory[S]] = (),
    public_routes: Sequence[str] = (),
    readiness: Sequence[ReadinessCheck] = (),
    resources: Sequence[Resource] = (),
) -> FastAPI:
    """``public_routes`` are the service's default routes open without a key
    (``SLUICE_PUBLIC_ROUTES`` overrides them)."""
    configure_logging(
        settings.service_name, settings.log_level, settings.log_format, settings.log_file
    )
    runtime = Runtime.create(settings, public_routes)
    checks = list(readiness)
    if runtime.redis is not None:
        checks.append(_redis_ready(runtime))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        siblings = None
        if settings.worker_state_dir is not None:
            siblings = Siblings(settings.worker_state_dir)
        signal_drain = SignalDrain(
            runtime.drain,
            settings.service_name,
            siblings=siblings,
            handoff_timeout=settings.handoff_wait,
        )
        signal_drain.install()
        async with AsyncExitStack() as stack:
            if runtime.redis is not None:
                stack.push_async_callback(runtime.redis.aclose)
            for resource in [*resources, *runtime.resources]:
                await stack.enter_async_context(resource(app))
            _tune_gc(GC_THRESHOLD)
            log.info(
                "service started",
                extra={
                    "event": "startup",
                    "api_keys": len(runtime.auth.keys),
                    "limits_storage": "redis" if runtime.redis is not None else "memory",
                },
            )
            if siblings is not None:
                siblings.mark("ready")  # a worker this one replaces may stop serving now
            try:
                yield
            finally:
                await signal_drain.finished(settings.drain_window + 5)
                signal_drain.uninstall()

    app = SluiceApp(
        title=title,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        dependencies=[Depends(runtime.auth)],
        # Starlette's trailing-slash redirect builds an absolute URL from the Host header
        # (Host: evil.example -> a 307 there): a path is served as it is named, or is a 404.
        redirect_slashes=False,
        # Sluice exports Prometheus metrics itself; FastAPI's native OpenTelemetry layer
        # costs ~60 us a request even when nothing is configured to receive it.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.limiter = runtime.rates.limiter
    install_error_handlers(app, redis_refusal)
    app.add_exception_handler(RateLimitExceeded, runtime.rates.exceeded)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if runtime.drain.draining:
            return error_response(503, "draining", "draining for shutdown", {"Retry-After": "1"})
        for check in [*checks, *runtime.readiness]:
            problem = await check()
            if problem is not None:
                return error_response(503, "not_ready", problem, {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "open_streams": runtime.drain.open_streams})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        body, content_type = render()
        return Response(body, media_type=content_type)

    @app.get("/_sluice/streams", include_in_schema=False)
    @runtime.rates.limit()
    def streams_summary(request: Request) -> Response:
        """Streams open now and how they ended (sluice.summary): a key's, never public. A
        plain def: reading every worker's metric files runs off the event loop."""
        body = summary(settings.service_name, runtime.latencies)
        return JSONResponse(body, headers={"cache-control": "no-store"})

    app.include_router(stream_token_router(runtime.auth))
    for build in routers:
        app.include_router(build(runtime))
    drain = runtime.drain
    app.add_middleware(
        RequestContextMiddleware,
        on_done=runtime.observer.request_done,
        closing=lambda: drain.draining,
    )
    return app


# Allocations between young collections on a streaming worker (CPython's default: 700).
GC_THRESHOLD = 20_000


def _tune_gc(threshold: int) -> None:
    """Keep the cyclic garbage collector off a streaming worker's hot path.

    What startup built lives as long as the worker, so it is frozen out of every later
    collection. CPython's young-generation threshold (700 allocations) makes a worker with
    hundreds of open streams collect thousands of times a second, each pass walking every
    stream's live objects: 7% of a token proxy's CPU at 200 streams. Refcounting frees almost
    all of it anyway; collections still run, just less often.
    """
    gc.collect()  # what is garbage now would never be collected once frozen
    gc.freeze()
    if threshold > 0:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, older, oldest)


def _redis_ready(runtime: Runtime[CoreSettings]) -> ReadinessCheck:
    async def check() -> str | None:
        assert runtime.redis is not None
        try:
            async with asyncio.timeout(runtime.settings.redis_timeout):
                await runtime.redis.ping()
        except Exception as exc:
            return f"redis unreachable: {type(exc).__name__}"
        return None

    return check
