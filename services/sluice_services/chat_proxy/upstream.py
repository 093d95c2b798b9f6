"""The upstream HTTP client: one pool per worker (:mod:`chat_proxy.http1`), with the
timeouts, the body bounds and the error kinds the proxy reports.

One client, the lean one: it is the one that holds against the hostile upstream suite
(tests/chat_proxy/test_hostile_upstream.py): it follows no redirect, asks for and accepts
only ``identity`` bodies, and never hands a connection with unread bytes to a next caller.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from typing import Literal, Protocol

from sluice.timers import StallTimer
from sluice_services.chat_proxy.frames import CommentTracker
from sluice_services.chat_proxy.http1 import Http1Error, Http1Pool, Http1Response
from sluice_services.chat_proxy.settings import ChatSettings

ErrorKind = Literal["connect", "timeout", "reset", "status", "error_event", "protocol", "too_large"]

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

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; UpstreamError ``too_large`` past ``limit`` bytes (None: the
        pool's largest answer)."""
        ...

    async def close(self) -> None:
        """Give the connection back, or drop it when the body was not read to its end."""
        ...


class Upstream:
    """The model server: requests time out, answers are bounded, errors have a kind."""

    def __init__(
        self,
        base_url: str,
        connect: float,
        read: float,
        max_connections: int,
        *,
        max_response_bytes: int = 8 * 1024 * 1024,
        ca_bundle: str | None = None,
        address: str | None = None,
    ) -> None:
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        self.pool = Http1Pool(
            base_url, connect, max_connections, ssl_context=context, address=address
        )
        self.read_timeout = read
        self.max_response_bytes = max_response_bytes

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
        return _Response(response, self.read_timeout, self.max_response_bytes)

    async def aclose(self) -> None:
        await self.pool.aclose()


class _Response:
    def __init__(self, response: Http1Response, read_timeout: float, max_bytes: int) -> None:
        self._response = response
        self.status = response.status
        self.read_timeout = read_timeout
        self.max_bytes = max_bytes

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name.lower())

    async def chunks(self) -> AsyncIterator[bytes]:
        response = self._response
        stalled = Http1Error("timeout", "upstream stalled")
        # Failed once reads have waited read_timeout in all since the upstream last said
        # something: SSE comments (a stuck model server's own ": ping") are no progress, and
        # time not reading (a slow client) does not count.
        timer = StallTimer(self.read_timeout, lambda: response.fail(stalled))
        comments = CommentTracker()
        try:
            while True:
                timer.wait_began()
                chunk = await response.read_chunk()
                if not chunk:
                    return
                timer.wait_ended(reset=comments.says_something(chunk))
                yield chunk
        except Http1Error as exc:
            raise UpstreamError(exc.kind, str(exc)) from None
        finally:
            timer.stop()

    async def read(self, limit: int | None = None) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await self._response.read(self.max_bytes if limit is None else limit)
        except TimeoutError:
            raise UpstreamError("timeout", "upstream stalled") from None
        except Http1Error as exc:
            raise UpstreamError(exc.kind, str(exc)) from None

    async def close(self) -> None:
        self._response.close()


def pool_size(max_streams: int) -> int:
    """Connections per worker: one a stream, and room besides for what is not a stream
    (non-streamed completions, /v1/models), so those are not queued behind a full cap."""
    return max_streams + max(8, max_streams // 10)


def make_upstream(settings: ChatSettings) -> Upstream:
    return Upstream(
        settings.upstream_base_url,
        settings.upstream_connect_timeout,
        settings.upstream_read_timeout,
        pool_size(settings.max_streams_per_worker),
        max_response_bytes=settings.upstream_max_response_bytes,
        ca_bundle=str(settings.upstream_ca_bundle) if settings.upstream_ca_bundle else None,
    )


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
    """The body up to its first chunk that says something, or None when it was empty.

    SSE comments before it (an upstream's ``: ping`` while its model is still silent) are
    held and come with it: until the first event the caller can still get a plain JSON
    error (a 504 for a first token that never comes), as from an upstream that sends
    nothing. Past EOF_MAX_BYTES of them the stream starts anyway (the stall timer still
    ends it).
    """
    held: list[bytes] = []
    size = 0
    comments = CommentTracker()
    async for chunk in chunks:
        if not chunk:
            continue
        if comments.says_something(chunk) or size + len(chunk) > EOF_MAX_BYTES:
            return b"".join([*held, chunk]) if held else chunk
        held.append(chunk)
        size += len(chunk)
    return b"".join(held) if held else None
