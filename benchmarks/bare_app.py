"""The same ten-line stream as /dummy-counter with no Sluice core: the baseline."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse


def create_app() -> FastAPI:
    app = FastAPI()

    async def lines() -> AsyncIterator[str]:
        for i in range(1, 11):
            yield f"Count: {i}\n"

    @app.get("/dummy-counter")
    async def counter() -> StreamingResponse:
        return StreamingResponse(lines(), media_type="text/plain")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
