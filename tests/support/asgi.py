"""Drive an ASGI app directly: lifespan, a request, and a client that can leave mid-stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.types import Message


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


@dataclass
class Result:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    completed: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def text(self) -> str:
        return self.body.decode()


async def request(
    app: FastAPI,
    target: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    leave_after: int | None = None,
    leave_at: float | None = None,
    timeout: float = 10.0,
) -> Result:
    """Send one request; with ``leave_after=n`` the client disconnects after n body chunks,
    with ``leave_at=s`` after s seconds (whatever it got by then)."""
    url = urlsplit(target)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": url.path,
        "raw_path": url.path.encode(),
        "query_string": url.query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    gone = asyncio.Event()
    sent_body = False
    result = Result()
    started = time.perf_counter()
    if leave_at is not None:
        asyncio.get_running_loop().call_later(leave_at, gone.set)

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            if message.get("body"):
                result.chunks.append(message["body"])
                result.times.append(time.perf_counter() - started)
                if leave_after is not None and len(result.chunks) >= leave_after:
                    gone.set()
            if not message.get("more_body", False):
                result.completed = True

    async with asyncio.timeout(timeout):
        await app(scope, receive, send)
    return result


async def stalled_client(app: FastAPI, target: str, writes: int = 2) -> None:
    """A client that accepts ``writes`` messages, then never reads again (and never leaves):
    every later ``send`` blocks, as on a socket whose reader stopped."""
    url = urlsplit(target)
    scope = {
        "type": "http",
        "method": "GET",
        "path": url.path,
        "raw_path": url.path.encode(),
        "query_string": url.query.encode(),
        "headers": [],
        "state": {},
        "root_path": "",
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "scheme": "http",
    }
    sent = 0

    async def receive() -> Message:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal sent
        sent += 1
        if sent > writes:
            await asyncio.Event().wait()

    await app(scope, receive, send)
