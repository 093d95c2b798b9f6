"""A lean HTTP/1.1 client for one upstream: a keep-alive pool over asyncio protocols.

Why its own: a token stream is hundreds of small body chunks, and a general client pays
for its generality on each of them (stream readers, flow-control hooks, timers, trace
hooks), and general clients follow redirects, ask for compressed bodies and keep cookies
by default. Here a chunk is parsed by httptools (llhttp, in C, the parser uvicorn uses)
straight into a list that the reader takes from.

What it does, and no more: one scheme/host/port, requests with a body or none, responses
with ``Content-Length``, chunked, or read-to-close bodies, TLS through ``ssl`` (the
system's trust store or the caller's context), keep-alive with an idle limit, a
connection cap (callers wait for a free slot), reading paused while a slow consumer has
``HIGH_WATER`` bytes waiting. No redirects (a 3xx is an answer like any other), cookies,
proxies or compression (``Accept-Encoding: identity`` is sent; an answer with another
``Content-Encoding`` is a protocol error).

Hostile answers are bounded: the bytes before the end of the final response's head
(status lines, 1xx answers, headers) are counted as they arrive, not when a header ends;
so are a body's bytes that are not body (chunk framing, and a chunked body's trailers:
httptools holds a trailer's value whole until it ends, as a header's), and trailers are
read past, never taken as headers; a body is read with a limit; bytes nobody asked for
(a late second answer on an idle pooled connection, bytes after a response's end) close
the connection, so that no caller ever takes another's answer.

Resending: a request is sent again on a new connection only when the server provably
never read it: the pooled connection was found closed, or with bytes waiting, before a
byte of the request was written (see ``_take_idle``). Once written, a request whose
connection fails is sent again only if its method is idempotent (GET, HEAD, OPTIONS) and
not a byte of its answer came: a POST the model server may have received (and started
generating for, and billed) is never sent twice.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from typing import Literal
from urllib.parse import urlsplit

import httptools

Kind = Literal["connect", "timeout", "reset", "protocol", "too_large"]

HIGH_WATER = 256 * 1024  # bytes waiting for the consumer before reading pauses
LOW_WATER = 64 * 1024  # ... and resumes
IDLE_SECONDS = 30.0  # a pooled connection unused this long is closed, not reused
MAX_HEADER_BYTES = 64 * 1024  # a response's head: status lines, 1xx answers and headers
MAX_BODY_BYTES = 8 * 1024 * 1024  # read()'s bound unless told
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# What h11 (uvicorn) accepts: a name is an RFC 9110 token; a value has no control byte but
# HTAB, and no leading or trailing whitespace.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"([\x21-\x7e\x80-\xff]([\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")


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
        self.expecting = False  # a request was written and its response has not ended
        self.wrote = False  # a byte of the current request went out
        self._start_response()

    def _start_response(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_bytes = 0  # bytes fed before the final response's headers ended
        self.framing = 0  # bytes fed since the last that held body bytes (trailers, ...)
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
        if not self.expecting:  # a late answer on an idle connection, or an unasked one
            self.fail(Http1Error("protocol", "upstream sent bytes no request asked for"))
            self.close()
            return
        self.got_bytes = True
        try:
            if self.headers_done:
                self._feed_body(data)
            else:
                self._feed_head(data)
        except httptools.HttpParserError as exc:
            self.fail(Http1Error("protocol", f"malformed response from upstream: {exc}"))
            self.close()
            return
        self._wake()

    def _feed_head(self, data: bytes) -> None:
        """Feed bytes while the head is not over, never past MAX_HEADER_BYTES of it: the
        parser holds a header's partial value until it ends, so the bound must be on the
        bytes as they come (a value that never ends would be buffered whole)."""
        room = MAX_HEADER_BYTES - self.head_bytes
        if len(data) <= room:
            self.head_bytes += len(data)
            self.parser.feed_data(data)
            return
        self.head_bytes = MAX_HEADER_BYTES
        self.parser.feed_data(data[:room])
        if not self.headers_done:
            raise httptools.HttpParserError(
                f"the response head exceeds {MAX_HEADER_BYTES} bytes (1xx answers included)"
            )
        self._feed_body(data[room:])

    def _feed_body(self, data: bytes) -> None:
        """Feed body bytes, never more than MAX_HEADER_BYTES in a row that hold no body: a
        chunked body's trailers (after its last, empty, chunk) are parsed like headers, so
        a trailer that never ends would grow without bound (and quadratically: httptools
        joins each piece of a value to what it holds)."""
        before = self.buffered  # (take() runs between feeds: this feed's body is the rise)
        self.parser.feed_data(data)
        body = self.buffered - before
        # Past a feed that held body, what followed its last body byte is at most the rest.
        self.framing = len(data) - body if body else self.framing + len(data)
        if self.framing > MAX_HEADER_BYTES and not self.complete:
            raise httptools.HttpParserError(
                f"{self.framing} bytes of the body without a body byte"
                f" (chunk framing or trailers; at most {MAX_HEADER_BYTES})"
            )

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        headers = self.headers
        if (
            self.headers_done
            and self.error is None
            and exc is None  # a reset is not the end of a body, whatever its framing
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

    def _refuse(self, message: str) -> None:
        """Fail the response with ``message`` from inside a parser callback (httptools
        replaces a callback's exception with its own "User callback error")."""
        self.fail(Http1Error("protocol", f"malformed response from upstream: {message}"))
        raise httptools.HttpParserError(message)

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the end of the response: nothing asked for them
            self._refuse("data after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:  # a chunked body's trailer: not a header of the response
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.informational = True
            self.headers = {}  # (the head's byte count goes on: a 1xx storm is bounded)
            return
        headers = self.headers
        if "transfer-encoding" in headers and "content-length" in headers:
            self._refuse("both Content-Length and Transfer-Encoding")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            self._refuse(f"Content-Encoding {encoding[:40]!r} (identity was asked for)")
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
        self.expecting = False

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
            if conn.error is not None and (not conn.complete or conn.error.kind == "protocol"):
                raise conn.error  # (bytes after the end: the framing that ended it is suspect)
            if conn.complete:
                return b""
            await conn.wait()

    def fail(self, error: Http1Error) -> None:
        """End a pending or later read with ``error`` (a stall watchdog's way in)."""
        if self._conn is not None:
            self._conn.fail(error)

    async def read(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The whole body; Http1Error ``too_large`` past ``limit`` bytes (what was read of
        it is dropped, and the connection with it)."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit:
                parts.clear()
                error = Http1Error("too_large", f"the upstream's answer exceeds {limit} bytes")
                self.fail(error)  # the connection is dropped on close, whatever is left
                raise error
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
        address: str | None = None,
    ) -> None:
        """``address``: the IP to connect to when the URL's host name was resolved by the
        caller (one pool per address of a name); Host and TLS's server name stay the URL's."""
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.address = address or url.hostname
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
                    # The server closed it while idle. Once more on a new connection only
                    # if it cannot have read this request: nothing of it was written, or
                    # the method may be repeated and no byte of an answer came.
                    if exc.kind != "reset" or conn.got_bytes:
                        raise
                    if conn.wrote and method not in IDEMPOTENT:
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
            conn.expecting = conn.wrote = True
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
                    self.address,
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
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS and _quiet(conn):
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


def _quiet(conn: _Connection) -> bool:
    """Nothing waits to be read on an idle connection: no close, no late answer in the
    socket that the loop has not delivered yet (an answer nobody asked for would be taken
    by the next request as its own). One poll(2) per reuse; a request written after it
    cannot have been read by a server that had already closed."""
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    fd = sock.fileno()
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


def _head(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    for line in (method, target):
        # A line break would smuggle in a header (or a request).
        if "\r" in line or "\n" in line or "\0" in line or " " in line:
            raise ValueError("a request line holds a line break or a space")
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
    names = set()
    for name, value in headers.items():
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"not a header name: {name[:40]!r}")
        if _VALUE.fullmatch(value) is None:
            raise ValueError(f"header {name!r}: a line break or control byte in its value")
        lower = name.lower()
        if lower in ("accept-encoding", "content-length", "transfer-encoding", "host"):
            continue  # the pool's own
        names.add(lower)
        lines.append(f"{name}: {value}")
    if "user-agent" not in names:
        lines.append("user-agent: sluice-chat-proxy")
    lines.append("accept-encoding: identity")
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("request headers must be latin-1") from None
