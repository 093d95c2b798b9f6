"""The upstream HTTP client: one pool per worker, three implementations behind one interface.

``native`` (:mod:`chat_proxy.http1`), aiohttp and httpx; ``benchmarks/chat_proxy.py``
measures them under the same load, and the default (``SLUICE_UPSTREAM_CLIENT``) is the one
that measured leanest. Failures are reported as
:class:`UpstreamError` with a ``kind`` that metrics and error mapping use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Literal, Protocol

import aiohttp
import httpx

from chat_proxy.http1 import Http1Error, Http1Pool, Http1Response

ErrorKind = Literal["connect", "timeout", "reset", "status", "error_event", "protocol"]

# After a stream's last event ([DONE]) only the body's terminator should follow, at once.
EOF_GRACE_SECONDS = 0.5
EOF_MAX_BYTES = 64 * 1024


class UpstreamError(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


class UpstreamResponse(Protocol):
    status: int

    def header(self, name: str) -> str | None: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; UpstreamError on a stall or a dropped connection."""
        ...

    async def read(self) -> bytes: ...

    async def close(self) -> None:
        """Give the connection back, or drop it when the body was not read to its end."""
        ...


class Upstream(Protocol):
    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class _Stalled(Exception):
    pass


class StallTimer:
    """Fails a body read after ``timeout`` seconds without a byte, with one lazily re-armed
    timer per response (aiohttp's ``sock_read`` re-schedules a timer on every chunk).

    A read that has waited ``timeout`` seconds for a byte is failed through ``on_stall``;
    time spent not reading (the client was slow) never counts.
    """

    def __init__(self, timeout: float, on_stall: Callable[[], None]) -> None:
        self.timeout = timeout
        self.on_stall = on_stall
        self.loop = asyncio.get_running_loop()
        self.since = self.loop.time()
        self.waiting = False
        self._handle = self.loop.call_at(self.since + timeout, self._check)

    def reading(self) -> None:
        self.waiting = True
        self.since = self.loop.time()

    def got_bytes(self) -> None:
        self.waiting = False

    def _check(self) -> None:
        due = self.since + self.timeout
        if self.waiting and self.loop.time() >= due:
            self.on_stall()
        else:
            self._handle = self.loop.call_at(max(due, self.loop.time() + 0.01), self._check)

    def stop(self) -> None:
        self._handle.cancel()


class AiohttpUpstream:
    def __init__(self, base_url: str, connect: float, read: float, max_connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.read_timeout = read
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=max_connections, ttl_dns_cache=300
        )
        # No sock_read: body stalls are watched by StallTimer, headers by asyncio.timeout.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect)
        # One session serves every caller: cookies an upstream sets must not travel from one
        # caller's request to the next (DummyCookieJar keeps none, and costs nothing).
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        try:
            async with asyncio.timeout(self.read_timeout):
                response = await self.session.request(
                    method, self.base_url + path, data=body, headers=dict(headers)
                )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError("timeout", f"upstream did not answer in time ({exc})") from None
        except aiohttp.ServerDisconnectedError:
            raise UpstreamError("reset", "upstream closed the connection") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("connect", f"upstream unreachable: {type(exc).__name__}") from None
        return _AiohttpResponse(response, self.read_timeout)

    async def aclose(self) -> None:
        await self.session.close()


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._response = response
        self.status = response.status
        self.read_timeout = read_timeout

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        # A stall fails the pending read itself: no task to find or cancel on every chunk.
        timer = StallTimer(self.read_timeout, lambda: content.set_exception(_Stalled()))
        try:
            while True:
                timer.reading()
                chunk = await content.readany()
                if not chunk:
                    return
                timer.got_bytes()
                yield chunk
        except _Stalled:
            raise UpstreamError("timeout", "upstream stalled") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                "reset", f"upstream connection lost: {type(exc).__name__}"
            ) from None
        finally:
            timer.stop()

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self._response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError("timeout", "upstream stalled") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                "reset", f"upstream connection lost: {type(exc).__name__}"
            ) from None

    async def close(self) -> None:
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class NativeUpstream:
    """The lean client (:mod:`chat_proxy.http1`): the default, by measurement."""

    def __init__(self, base_url: str, connect: float, read: float, max_connections: int) -> None:
        self.pool = Http1Pool(base_url, connect, max_connections)
        self.read_timeout = read

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        try:
            async with asyncio.timeout(self.read_timeout):
                response = await self.pool.request(method, path, headers, body)
        except TimeoutError:
            raise UpstreamError("timeout", "upstream did not answer in time") from None
        except Http1Error as exc:
            raise UpstreamError(exc.kind, str(exc)) from None
        return _NativeResponse(response, self.read_timeout)

    async def aclose(self) -> None:
        await self.pool.aclose()


class _NativeResponse:
    def __init__(self, response: Http1Response, read_timeout: float) -> None:
        self._response = response
        self.status = response.status
        self.read_timeout = read_timeout

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name.lower())

    async def chunks(self) -> AsyncIterator[bytes]:
        response = self._response
        stalled = Http1Error("timeout", "upstream stalled")
        timer = StallTimer(self.read_timeout, lambda: response.fail(stalled))
        try:
            while True:
                timer.reading()
                chunk = await response.read_chunk()
                if not chunk:
                    return
                timer.got_bytes()
                yield chunk
        except Http1Error as exc:
            raise UpstreamError(exc.kind, str(exc)) from None
        finally:
            timer.stop()

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self._response.read()
        except TimeoutError:
            raise UpstreamError("timeout", "upstream stalled") from None
        except Http1Error as exc:
            raise UpstreamError(exc.kind, str(exc)) from None

    async def close(self) -> None:
        self._response.close()


class HttpxUpstream:
    def __init__(self, base_url: str, connect: float, read: float, max_connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect, read=read, write=connect, pool=connect),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # keeps none
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        request = self.client.build_request(
            method, self.base_url + path, content=body, headers=dict(headers)
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamError("timeout", f"upstream did not answer in time ({exc})") from None
        except httpx.RemoteProtocolError:
            raise UpstreamError("reset", "upstream closed the connection") from None
        except httpx.HTTPError as exc:
            raise UpstreamError("connect", f"upstream unreachable: {type(exc).__name__}") from None
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self.client.aclose()


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    async def chunks(self) -> AsyncIterator[bytes]:
        with _httpx_body_errors():
            async for chunk in self._response.aiter_raw():
                yield chunk

    async def read(self) -> bytes:
        with _httpx_body_errors():
            return await self._response.aread()

    async def close(self) -> None:
        await self._response.aclose()


@contextmanager
def _httpx_body_errors() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException:
        raise UpstreamError("timeout", "upstream stalled") from None
    except httpx.HTTPError as exc:
        raise UpstreamError("reset", f"upstream connection lost: {type(exc).__name__}") from None


def make_upstream(
    kind: str, base_url: str, connect: float, read: float, max_connections: int
) -> Upstream:
    if kind == "httpx":
        return HttpxUpstream(base_url, connect, read, max_connections)
    if kind == "aiohttp":
        return AiohttpUpstream(base_url, connect, read, max_connections)
    return NativeUpstream(base_url, connect, read, max_connections)


async def read_to_end(chunks: AsyncIterator[bytes]) -> None:
    """Read what is left of a finished stream's body, so its connection can be reused.

    Closing a response before its body's end drops the connection, and the next stream
    then pays for a new one. Bounded by EOF_GRACE_SECONDS and EOF_MAX_BYTES: an upstream
    that goes on after its last event loses the connection, not the caller's time.
    """
    left = EOF_MAX_BYTES
    with suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(EOF_GRACE_SECONDS):
            async for chunk in chunks:
                left -= len(chunk)
                if left <= 0:
                    return


async def first_chunk(chunks: AsyncIterator[bytes]) -> bytes | None:
    """The first non-empty body chunk, or None when the body was empty."""
    async for chunk in chunks:
        if chunk:
            return chunk
    return None
