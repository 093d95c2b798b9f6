"""A raw-socket model server on 127.0.0.1 that misbehaves on cue.

The next request after :meth:`HostileUpstream.arm` gets the attack; every other request
gets an honest OpenAI-shaped answer that names its caller (its ``x-request-id``), so a
test can tell whether a caller got its own answer or somebody else's. It records which
connection (by the client's port) each request came on. Everything it does is bounded:
each connection's handler ends after ``HANDLER_SECONDS``, and an attack's bytes are a
size it is given, written in blocks as the client reads them (a client that stops
reading stops the server, not the other way round).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

HANDLER_SECONDS = 10.0
BLOCK = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    port: int  # the client's port: which pooled connection it came on

    @property
    def request_id(self) -> str:
        return self.headers.get("x-request-id", "")

    @property
    def stream(self) -> bool:
        if not self.body:
            return False
        payload = json.loads(self.body)
        return bool(payload.get("stream"))


@dataclass
class Peer:
    """One connection, as an attack sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    request: Request
    serve_on: bool = False  # set by an attack whose answer was well framed: serve the rest

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_repeated(self, block: bytes, total: int) -> int:
        """``block`` again and again, ``total`` bytes in all or until the client goes away
        (or stops reading: the handler's time bound ends that). The bytes it wrote."""
        sent = 0
        with suppress(ConnectionError):
            while sent < total:
                piece = block[: total - sent]
                self.writer.write(piece)
                await self.writer.drain()
                sent += len(piece)
        return sent

    def reset(self) -> None:
        """A TCP reset (RST), not a clean close: SO_LINGER 0, then abort."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def linger(self, seconds: float) -> None:
        """Keep the connection open and say nothing (bounded), reading what comes."""
        with suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(seconds):
                while await self.reader.read(BLOCK):
                    pass

    async def honest(self) -> None:
        await self.send(honest_answer(self.request))


Attack = Callable[[Peer], Awaitable[None]]


@dataclass
class HostileUpstream:
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    attack: Attack | None = None
    attacked: Request | None = None  # the request the attack answered

    def arm(self, attack: Attack) -> None:
        """The next chat completion request gets ``attack`` instead of an answer."""
        self.attack = attack
        self.attacked = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def answer_text(request_id: str) -> str:
    return f"answer for {request_id}"


def sse_event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def delta_event(content: str) -> bytes:
    return sse_event({"id": "c", "choices": [{"index": 0, "delta": {"content": content}}]})


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def honest_answer(request: Request) -> bytes:
    """A whole, well-framed answer to ``request``, keep-alive."""
    if request.path.endswith("/models"):
        body = json.dumps({"object": "list", "data": [{"id": "mock-gpt"}]}).encode()
        return head(200, [("content-type", "application/json")], len(body)) + body
    text = answer_text(request.request_id)
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    if not request.stream:
        message = {"role": "assistant", "content": text}
        payload = {"id": "c", "choices": [{"index": 0, "message": message}], "usage": usage}
        body = json.dumps(payload).encode()
        return head(200, [("content-type", "application/json")], len(body)) + body
    events = [
        delta_event(text),
        sse_event({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        sse_event({"id": "c", "choices": [], "usage": usage}),
        b"data: [DONE]\n\n",
    ]
    chunked = [("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]
    return head(200, chunked) + b"".join(chunk(e) for e in events) + b"0\r\n\r\n"


def head(status: int, headers: list[tuple[str, str]], length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_request(reader: asyncio.StreamReader, port: int) -> Request | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body, port)


@asynccontextmanager
async def hostile_upstream() -> AsyncIterator[HostileUpstream]:
    state = HostileUpstream()
    handlers: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        port = writer.get_extra_info("peername")[1]
        try:
            async with asyncio.timeout(HANDLER_SECONDS):
                while (request := await _read_request(reader, port)) is not None:
                    state.requests.append(request)
                    peer = Peer(reader, writer, request)
                    attack = state.attack
                    if attack is not None and request.path.endswith("/chat/completions"):
                        state.attack, state.attacked = None, request
                        await attack(peer)
                        if not peer.serve_on:
                            return  # an attacked connection serves nothing more
                        continue
                    await peer.honest()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Cancelled by the server's end (below): ended, not failed. (asyncio's stream
            # callback asks a cancelled handler for its exception, and logs the answer.)
            pass
        finally:
            handlers.discard(task)
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(handlers):  # the handlers of connections still open end now
            task.cancel()
