"""Work raced against the client leaving: a stream's start, before its first byte.

Until a stream's response starts nothing listens for the client's ``http.disconnect``
(sluice.streaming's listener starts with the response): a client that leaves while the
model server is still silent (a long prefill, or only ``: ping`` comments) would hold
the upstream request and its cap slot until the first token came, up to the read
timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


async def until_disconnect(receive: Receive, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None when the client disconnects first (``work`` is then
    cancelled, and done, when this returns). ``work``'s exceptions are raised as its own.

    Called once the request's body was read (or for a request without one): what
    ``receive`` returns then is an ``http.request`` without a body (ignored) or
    ``http.disconnect``; a receive left pending is cancelled, which consumes nothing, so a
    response that starts after this gets every message it would have got, and a server
    (uvicorn) answers every receive after a disconnect with another ``http.disconnect``.
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(work)
    listener = loop.create_task(_disconnected(receive))
    try:
        await asyncio.wait((task, listener), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request was cancelled: the work goes with it
        await _cancel(task, listener)
        raise
    if task.done():  # (both done: the work's result still has its owner)
        await _cancel(listener)
        return task.result()
    await _cancel(task, listener)
    return None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
