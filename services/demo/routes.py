"""The seed's endpoints, with the seed's behaviour and media types."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from demo.settings import DemoSettings
from sluice.events import Event
from sluice.formats import StreamFormat
from sluice.streaming import StreamResponse, stream

router = APIRouter()

TOY_MESSAGES = (
    "Starting stream...\n",
    "Chunk 1: Hello!\n",
    "Chunk 2: This is a toy example.\n",
    "Chunk 3: Streaming in real-time.\n",
    "End of stream.\n",
)
EVENT_TYPES = ("update", "alert", "info")


def _settings(request: Request) -> DemoSettings:
    settings = request.app.state.settings
    assert isinstance(settings, DemoSettings)
    return settings


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


@router.get("/toy-stream", response_class=StreamResponse, summary="Five text lines, 1 s apart")
async def toy_stream(request: Request) -> StreamResponse:
    return stream(request, toy_messages(_settings(request).demo_toy_delay), StreamFormat.TEXT)


@router.get("/dummy-counter", response_class=StreamResponse, summary="Count: 1..10, 0.5 s apart")
async def dummy_counter(request: Request) -> StreamResponse:
    return stream(request, counter(_settings(request).demo_counter_delay), StreamFormat.TEXT)


@router.get("/dummy-events", response_class=StreamResponse, summary="Endless random SSE events")
async def dummy_events(request: Request) -> StreamResponse:
    return stream(request, random_events(_settings(request).demo_events_interval), StreamFormat.SSE)
