"""The seed's endpoints, with the seed's behaviour and media types."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from sluice.admission import stream
from sluice.events import Event
from sluice.formats import StreamFormat
from sluice.runtime import Runtime
from sluice.streaming import StreamResponse
from sluice_services.demo.settings import DemoSettings

TOY_MESSAGES = (
    "Starting stream...\n",
    "Chunk 1: Hello!\n",
    "Chunk 2: This is a toy example.\n",
    "Chunk 3: Streaming in real-time.\n",
    "End of stream.\n",
)
EVENT_TYPES = ("update", "alert", "info")


async def toy_messages(delay: float) -> AsyncIterator[Event]:
    for message in TOY_MESSAGES:
        yield Event(data=message)
        await asyncio.sleep(delay)


async def counter(delay: float) -> AsyncIterator[Event]:
    for i in range(1, 11):
        yield Event(data=f"Count: {i}\n")
        await asyncio.sleep(delay)


async def random_events(interval: float) -> AsyncIterator[Event]:
    """Endless; the core ends it when the client leaves."""
    while True:
        payload = {"time": time.time(), "value": random.randint(1, 100)}
        yield Event(data=payload, event=random.choice(EVENT_TYPES))
        await asyncio.sleep(interval)


def build_router(runtime: Runtime[DemoSettings]) -> APIRouter:
    settings = runtime.settings
    limit = runtime.rates.limit
    router = APIRouter(tags=["demo"])

    @router.get("/toy-stream", response_class=StreamResponse, summary="Five lines, 1 s apart")
    @limit()
    async def toy_stream(request: Request) -> StreamResponse:
        events = toy_messages(settings.dev_demo_toy_delay)
        return await stream(request, events, StreamFormat.TEXT, drain="finish")

    @router.get("/dummy-counter", response_class=StreamResponse, summary="Count: 1..10")
    @limit()
    async def dummy_counter(request: Request) -> StreamResponse:
        events = counter(settings.dev_demo_counter_delay)
        return await stream(request, events, StreamFormat.TEXT, drain="finish")

    @router.get("/dummy-events", response_class=StreamResponse, summary="Endless random SSE")
    @limit()
    async def dummy_events(request: Request) -> StreamResponse:
        events = random_events(settings.dev_demo_events_interval)
        return await stream(request, events, StreamFormat.SSE)

    return router
