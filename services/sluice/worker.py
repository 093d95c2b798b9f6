"""The gunicorn worker every service runs (``deploy/gunicorn.conf.py``): uvicorn's, with the
request-head limits uvicorn lacks.

nginx guards the public path, but a service port is reachable too (make run, a pod's IP).
uvicorn has no time limit on receiving a request's headers and its httptools parser takes
headers of any size, and gunicorn's ``limit_request_*`` settings never reach a uvicorn
worker. So the protocol here bounds, per connection:

- the time from a connection's first byte (or a keep-alive request's first byte) to the end
  of its headers: ``SLUICE_HEADER_TIMEOUT``; past it the connection is closed (slowloris);
- the longest silence inside a request's body, the same number of seconds (a body that is
  declared and never comes); not while the server itself holds reading back;
- the size of the request line and headers: ``SLUICE_MAX_HEADER_BYTES``; past it, a 431 with
  a JSON body, and the connection closed.

Idle keep-alive connections are closed after ``SLUICE_KEEPALIVE`` seconds by uvicorn itself.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from sluice.errors import error_body
from sluice.settings import ServerSettings

_LINGER = 2.0  # seconds a refused connection's further input is read and dropped


class _HeadTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request head."""

    header_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 65_536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or inside a request's line and headers
        self._head_bytes = 0  # raw bytes received since the head began
        self._head_size = 0  # request line + header bytes the parser has reported
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing at all is bounded too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._quiet_body()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 431: drop the rest of what the client sends
        if not self._in_head:
            if self._body_timer is not None:
                self._await_body()  # the body moved: its silence starts again
            super().data_received(data)
            return
        self._arm()
        self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            self._refuse()  # still no end of headers after more than the limit

    # uvicorn's data_received answers any parser error with a 400, a callback's exception
    # (our _HeadTooLarge) included: that one is a 431.
    def send_400_response(self, msg: str) -> None:
        if self._head_size > self.max_header_bytes:
            self._refuse()
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        self._await_body()  # until the message completes (at once, for a request with none)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._quiet_body()
        super().on_message_complete()
        self._in_head = True  # the next request's head, whenever its first byte comes
        self._head_bytes = 0

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_header_bytes:
            raise _HeadTooLarge

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _await_body(self) -> None:
        self._quiet_body()
        self._body_timer = self.loop.call_later(self.header_timeout, self._body_timed_out)

    def _quiet_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.flow is not None and self.flow.read_paused:
            self._await_body()  # the server holds reading back (the app is slow): not a stall
            return
        if not self.transport.is_closing():
            self.logger.info(
                "closing a connection: its request body stalled %ss", self.header_timeout
            )
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.logger.info("closing a connection: no request headers in %ss", self.header_timeout)
            self.transport.close()

    def _refuse(self) -> None:
        """431 with a JSON body, then close after a short linger (closing with unread input
        would reset the connection, and the client could lose the answer)."""
        self._refused = True
        self._disarm()
        message = f"request line and headers over {self.max_header_bytes} bytes"
        body = json.dumps(error_body("request_header_fields_too_large", message)).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        self.logger.info("refusing a request: %s", message)
        self.transport.write(head + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER, self.transport.close)


class SluiceWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn's gunicorn worker with the guarded protocol, limits from ``ServerSettings``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = ServerSettings()
        protocol = type(
            "GuardedHttpToolsProtocol",
            (GuardedHttpToolsProtocol,),
            {
                "header_timeout": settings.header_timeout,
                "max_header_bytes": settings.max_header_bytes,
            },
        )
        # Read when the worker loads its config (at serve), so setting them here is in time.
        self.config.http = protocol
        self.config.h11_max_incomplete_event_size = settings.max_header_bytes
