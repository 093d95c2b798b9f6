"""``create_app``: the one factory helper every service's ``create_app()`` calls.

It wires the core around a service's routers: JSON errors, request ids and access
logs, ``/healthz`` and ``/readyz``, ``/metrics``, and the SIGTERM drain.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sluice.drain import Drain, SignalDrain
from sluice.errors import error_response, install_error_handlers
from sluice.logs import configure_logging
from sluice.metrics import StreamMetrics, render
from sluice.request_context import RequestContextMiddleware
from sluice.runtime import Runtime
from sluice.settings import CoreSettings

log = logging.getLogger("sluice.app")

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns ``None`` when ready, else a short reason (shown on ``/readyz``)."""

Resource = Callable[[FastAPI], AbstractAsyncContextManager[None]]
"""Something a service opens at startup and closes at shutdown (clients, pools)."""


def create_app(
    settings: CoreSettings,
    *,
    title: str,
    routers: Sequence[APIRouter] = (),
    readiness: Sequence[ReadinessCheck] = (),
    resources: Sequence[Resource] = (),
) -> FastAPI:
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    metrics = StreamMetrics(settings.service_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings=settings, drain=Drain(settings.drain_window), observer=metrics)
        app.state.runtime = runtime
        signal_drain = SignalDrain(runtime.drain)
        signal_drain.install()
        async with AsyncExitStack() as stack:
            for resource in resources:
                await stack.enter_async_context(resource(app))
            log.info("service started", extra={"event": "startup"})
            try:
                yield
            finally:
                signal_drain.uninstall()

    app = FastAPI(title=title, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": settings.service_name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        if runtime.drain.draining:
            return error_response(503, "draining", "draining for shutdown", {"Retry-After": "1"})
        for check in readiness:
            problem = await check()
            if problem is not None:
                return error_response(503, "not_ready", problem, {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "open_streams": runtime.drain.open_streams})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        body, content_type = render()
        return Response(body, media_type=content_type)

    for router in routers:
        app.include_router(router)
    app.add_middleware(RequestContextMiddleware, on_done=metrics.request_done)
    return app
