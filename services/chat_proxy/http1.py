"""A lean HTTP/1.1 client for one upstream: a keep-alive pool over asyncio protocols.

Why not only aiohttp: a token stream is hundreds of small body chunks, and a general
client pays for its generality on each of them (stream readers, flow-control hooks,
timers, trace hooks). Here a chunk is parsed by httptools (llhttp, in C, the parser
uvicorn uses) straight into a list that the reader takes from: in
``benchmarks/chat_proxy.py`` chat-proxy costs ~14% less CPU per stream with it than with
aiohttp.

What it does, and no more: one scheme/host/port, requests with a body or none, responses
with ``Content-Length``, chunked, or read-to-close bodies, TLS through ``ssl`` with the
system's trust store, keep-alive with an idle limit, a connection cap (callers wait for
a free slot), reading paused while a slow consumer has ``HIGH_WATER`` bytes waiting. No
redirects, cookies, proxies or compression (no ``Accept-Encoding`` is sent, so bodies
come as they are). A request that fails on a reused keep-alive connection before any
byte of its response (the server closed it while idle) is sent once more on a new one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from typing import Literal
from urllib.parse import urlsplit

import httptools

Kind = Literal["connect", "timeout", "reset", "protocol"]

HIGH_WATER = 256 * 1024  # bytes waiting for the consumer before reading pauses
LOW_WATER = 64 * 1024  # ... and resumes
IDLE_SECONDS = 30.0  # a pooled connection unused this long is closed, not reused
MAX_HEADER_BYTES = 64 * 1024


class Http1Error(Exception):
    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, one response at a time."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()  # once: on Python 3.11 each call is a getpid()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pooled = False  # waiting in the pool's idle list
        self.idle_since = 0.0
        self._start_response()

    def _start_response(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.headers_done = False
        self.informational = False  # a 1xx answer (103 Early Hints) before the real one
        self.keep_alive = False
        self.complete = False
        self.got_bytes = False
        self.error: Http1Error | None = None
        self.waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio and uvloop set TCP_NODELAY on TCP transports themselves.)
        self.transport = transport  # type: ignore[assignment]  # a TCP or TLS transport

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(Http1Error("protocol", f"malformed response from upstream: {exc}"))
            self.close()
            return
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        headers = self.headers
        if (
            self.headers_done
            and self.error is None
            and "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
        ):
            self.complete = True  # a body without a length ends when the connection does
        if not self.complete:
            detail = type(exc).__name__ if exc is not None else "closed"
            self.fail(Http1Error("reset", f"upstream connection lost ({detail})"))
        self._wake()

    def pause_writing(self) -> None:  # requests are small: nothing to throttle
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the end of the response: nothing asked for them
            raise httptools.HttpParserError("data after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("response headers too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.informational = True
            self.headers = {}
            self.header_bytes = 0
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()  # (after the end it says False)
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False  # the real response follows
            return
        self.complete = True

    # used by the response

    def fail(self, error: Http1Error) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        waiter = self.waiter = self.loop.create_future()
        await waiter

    def take(self) -> bytes:
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Response:
    """One response: headers are in; the body is read with :meth:`read_chunk`."""

    def __init__(self, pool: Http1Pool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers

    async def read_chunk(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); b"" at the end."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if conn.body:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    def fail(self, error: Http1Error) -> None:
        """End a pending or later read with ``error`` (a stall watchdog's way in)."""
        if self._conn is not None:
            self._conn.fail(error)

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Give the connection back when the body was read to its end, else drop it; the
        pool slot this response held is free either way. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._pool.done_with(conn, reuse=conn.complete and not conn.body and conn.error is None)

    def __del__(self) -> None:
        # A response dropped unclosed (a body generator that never ran, so its finally did
        # not either) must not keep its slot: the pool would run dry one leak at a time.
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):  # at interpreter exit the loop may be gone
                self._pool.done_with(conn, reuse=False)


class Http1Pool:
    def __init__(
        self,
        base_url: str,
        connect_timeout: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        default_port = self.port == (443 if url.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.ssl: ssl.SSLContext | None = None
        if url.scheme == "https":  # the system's trust store unless told otherwise
            self.ssl = ssl_context or ssl.create_default_context()
        self.connect_timeout = connect_timeout
        # A slot is taken by request() and given back by the response's close().
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._busy: set[_Connection] = set()
        self._closed = False

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> Http1Response:
        """Send a request and wait for its response headers (the caller bounds the wait).

        The response must be closed: it holds a connection slot until then.
        """
        head = _head(method, self.prefix + path, self.host_header, headers, body)
        await self._slots.acquire()
        try:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, head, body)
                except Http1Error as exc:
                    # The server may have closed it while idle: once more on a new one.
                    if exc.kind != "reset" or conn.got_bytes:
                        raise
            return await self._exchange(await self._connect(), head, body)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes | None) -> Http1Response:
        conn._start_response()
        self._busy.add(conn)
        transport = conn.transport
        try:
            if conn.closed or transport is None:
                raise Http1Error("reset", "upstream connection lost (closed)")
            transport.write(head + body if body else head)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            self._busy.discard(conn)
            conn.close()
            raise
        return Http1Response(self, conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            raise Http1Error("timeout", "connecting to the upstream timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise Http1Error("connect", f"upstream unreachable: {type(exc).__name__}") from None
        conn.transport = transport  # uvloop may call connection_made only after returning
        return conn

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be stale
            conn.pooled = False
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def done_with(self, conn: _Connection, reuse: bool) -> None:
        """A response is closed: its slot is free, its connection pooled or closed."""
        self._busy.discard(conn)
        self._slots.release()
        if reuse and not self._closed and not conn.closed and conn.keep_alive:
            conn.idle_since = time.monotonic()
            conn.pooled = True
            self._idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: _Connection) -> None:
        """A connection that is gone is never handed out again."""
        if conn.pooled:
            conn.pooled = False
            self._idle.remove(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, deque()
        for conn in [*idle, *self._busy]:
            conn.pooled = False
            conn.close()
        await asyncio.sleep(0)  # let the transports close


def _head(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if not any(name.lower() == "user-agent" for name in headers):
        lines.append("user-agent: sluice-chat-proxy")
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    for line in lines:
        # A line break in a name or value would smuggle in a header (or a request).
        if "\r" in line or "\n" in line or "\0" in line:
            raise ValueError("a request line or header holds a line break")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("request headers must be latin-1") from None
