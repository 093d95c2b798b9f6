"""The lean HTTP/1.1 upstream client, against raw servers on 127.0.0.1 that say exactly
what each test needs (keep-alive, chunking, closes, resets, malformed answers, TLS)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest

from sluice_services.chat_proxy.http1 import HIGH_WATER, MAX_HEADER_BYTES, Http1Error, Http1Pool
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.upstream import UpstreamError, make_upstream

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0


@asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A server that hands each connection (and its number) to ``handler``."""
    state = Server()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await handler(reader, writer, state.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader, state: Server) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    request = head + await reader.readexactly(length)
    state.requests.append(request)
    return request


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_sequential_requests_share_one_keep_alive_connection() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            request = await read_request(reader, state)
            writer.write(answer(b"echo:" + request.split(b"\r\n\r\n", 1)[1]))
            await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}/v1", 2.0, 4)
        for n in range(3):
            response = await pool.request("POST", "/chat", {"x-n": str(n)}, b"body-%d" % n)
            assert response.status == 200
            assert await response.read() == b"echo:body-%d" % n
            response.close()
        await pool.aclose()
    assert state.connections == 1
    head = state.requests[0].split(b"\r\n")
    assert head[0] == b"POST /v1/chat HTTP/1.1"
    assert f"host: 127.0.0.1:{state.port}".encode() in head
    assert b"content-length: 6" in head and b"x-n: 0" in head
    assert b"user-agent: sluice-chat-proxy" in head
    assert [line for line in head if line.lower().startswith(b"accept-encoding")] == [
        b"accept-encoding: identity"  # bodies are relayed as they come: never compressed
    ]


async def test_chunked_and_read_to_close_bodies() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        if n == 1:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"data: a\n\n", b"data: b\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await read_request(reader, state)  # the connection was kept: a second request
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/events", {}, None)
        assert response.status == 200 and "link" not in response.headers  # past the 103
        parts = []
        while chunk := await response.read_chunk():
            parts.append(chunk)
        assert parts == [b"data: a\n\n", b"data: b\n\n"]  # as they came, not re-buffered
        response.close()
        response = await pool.request("GET", "/rest", {}, None)
        assert await response.read() == b"until the end"  # no length: ends with the connection
        response.close()
        assert not pool._idle  # connection: close is not pooled
        await pool.aclose()
    assert state.connections == 1


async def test_regression_a_connection_the_server_closed_while_idle_failed_the_next_request() -> (
    None
):
    # Servers close idle keep-alive connections (uvicorn after 5 s): a request sent on one
    # of those before the close was noticed must go again on a new connection.
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(answer(b"one answer a connection"))
        await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        for _ in range(3):
            response = await pool.request("GET", "/", {}, None)
            assert await response.read() == b"one answer a connection"
            response.close()
        await pool.aclose()
    assert state.connections == 3


async def test_failures_are_reported_by_kind() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        else:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        with pytest.raises(Http1Error) as lost:
            await response.read()
        assert lost.value.kind == "reset"
        response.close()
        with pytest.raises(Http1Error) as malformed:
            await pool.request("GET", "/", {}, None)
        assert malformed.value.kind == "protocol"
        await pool.aclose()
    closed = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)  # nobody listens now
    with pytest.raises(Http1Error) as refused:
        await closed.request("GET", "/", {}, None)
    assert refused.value.kind == "connect"


async def test_a_response_closed_before_its_end_is_not_reused() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, state)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"4\r\nrest\r\n0\r\n\r\n")
            await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        assert await response.read_chunk() == b"first"
        response.close()  # the rest would arrive on the next request's connection
        response = await pool.request("GET", "/", {}, None)
        assert await response.read() == b"firstrest"
        response.close()
        await pool.aclose()
    assert state.connections == 2


async def test_the_connection_cap_makes_a_caller_wait_for_a_slot() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, state)
            writer.write(answer(b"ok"))
            await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 1)
        first = await pool.request("GET", "/", {}, None)
        second = asyncio.ensure_future(pool.request("GET", "/", {}, None))
        await asyncio.sleep(0.1)
        assert not second.done()  # the only slot is held by a response not yet closed
        assert await first.read() == b"ok"
        first.close()
        response = await asyncio.wait_for(second, 2)
        assert await response.read() == b"ok"
        response.close()
        await pool.aclose()
    assert state.connections == 1


async def test_a_slow_reader_pauses_reading_instead_of_buffering_everything() -> None:
    state: Server
    size = 16 * HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(answer(b"x" * size))
        await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        await asyncio.sleep(0.3)  # not reading: the server keeps sending
        conn = response._conn
        assert conn is not None and conn.paused
        assert conn.buffered < 2 * HIGH_WATER
        assert len(await response.read()) == size
        response.close()
        await pool.aclose()


async def test_a_header_with_a_line_break_is_refused() -> None:
    pool = Http1Pool("http://127.0.0.1:9", 2.0, 4)
    with pytest.raises(ValueError, match="line break"):
        await pool.request("GET", "/", {"x-id": "a\r\nx-evil: 1"}, None)
    with pytest.raises(ValueError, match="http"):
        Http1Pool("ftp://127.0.0.1/", 2.0, 4)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (openssl, as make test installs it)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_with_the_callers_trust(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, state)
            writer.write(answer(b"over tls"))
            await writer.drain()

    async with serve(handler, tls=server_tls) as state:
        url = f"https://localhost:{state.port}/v1"
        untrusted = Http1Pool(url, 2.0, 4)  # the system's trust store does not know it
        with pytest.raises(Http1Error) as refused:
            await untrusted.request("GET", "/models", {}, None)
        assert refused.value.kind == "connect"
        trust = ssl.create_default_context(cafile=str(cert))
        pool = Http1Pool(url, 2.0, 4, ssl_context=trust)
        for _ in range(2):
            response = await pool.request("GET", "/models", {}, None)
            assert await response.read() == b"over tls"
            response.close()
        await pool.aclose()
    assert state.requests[0].startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert f"host: localhost:{state.port}".encode() in state.requests[0]


async def test_regression_a_response_dropped_unclosed_kept_its_slot_forever() -> None:
    # A stream body generator that never ran never ran its finally either: the response
    # it held went away unclosed, and with it one of the pool's slots, for good.
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, state)
            writer.write(answer(b"ok"))
            await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 1)
        response = await pool.request("GET", "/", {}, None)
        del response  # never read, never closed
        response = await asyncio.wait_for(pool.request("GET", "/", {}, None), 2)
        assert await response.read() == b"ok"
        response.close()
        await pool.aclose()


async def test_regression_a_late_answer_still_in_the_socket_was_taken_by_the_next_request() -> None:
    # The server sent a second, unrequested answer while the connection idled in the pool;
    # it sat in the socket, not yet delivered by the loop, when the next request took the
    # connection: that request would have read it as its own answer. (A blocking server in
    # a thread, so that the loop cannot run between the late answer and the reuse.)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    go, sent = threading.Event(), threading.Event()

    def serve_blocking() -> None:
        with listener:
            for n in range(2):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(answer(b"yours"))
                    if n == 0:
                        go.wait(5)
                        conn.sendall(answer(b"POISON"))
                        sent.set()
                        with suppress(OSError):  # (a reset: it had bytes unread)
                            conn.recv(65536)  # until the client closes it

    thread = threading.Thread(target=serve_blocking, daemon=True)
    thread.start()
    pool = Http1Pool(f"http://127.0.0.1:{port}", 2.0, 4)
    response = await pool.request("GET", "/", {}, None)
    assert await response.read() == b"yours"
    response.close()
    assert len(pool._idle) == 1
    go.set()
    assert sent.wait(5)  # blocking on purpose: the loop must not run
    time.sleep(0.05)  # noqa: ASYNC251  # the bytes reach the client's socket buffer
    assert pool._take_idle() is None  # not handed out: it has bytes nobody asked for
    response = await pool.request("GET", "/", {}, None)
    assert await response.read() == b"yours"
    response.close()
    await pool.aclose()
    thread.join(5)


async def test_bytes_on_an_idle_connection_close_it() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(answer(b"yours"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON")
        await writer.drain()
        await asyncio.sleep(1)

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        assert await response.read() == b"yours"
        response.close()
        assert len(pool._idle) == 1
        await asyncio.sleep(0.3)  # delivered by the loop while pooled
        assert not pool._idle  # closed, and forgotten by the pool
        await pool.aclose()


async def test_regression_a_reset_after_part_of_a_read_to_close_body_was_its_end() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart of the bo")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        with pytest.raises(Http1Error) as lost:
            await response.read()
        assert lost.value.kind == "reset"
        response.close()
        await pool.aclose()


async def test_regression_a_post_that_failed_on_a_reused_connection_was_sent_again() -> None:
    # The server read the POST, then closed: it may be generating (and billing) it.
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(answer(b"first"))
        await writer.drain()
        await read_request(reader, state)  # read, never answered

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("POST", "/", {}, b"one")
        assert await response.read() == b"first"
        response.close()
        with pytest.raises(Http1Error) as lost:
            await pool.request("POST", "/", {}, b"two")
        assert lost.value.kind == "reset"
        await pool.aclose()
    assert [r.endswith(b"two") for r in state.requests] == [False, True]  # sent once


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"x-a: b": "1"}, "not a header name"),
        ({"x a": "1"}, "not a header name"),
        ({"": "1"}, "not a header name"),
        ({"x-é": "1"}, "not a header name"),
        ({"x-id": "a\r\nx-evil: 1"}, "control byte"),
        ({"x-id": "a\x00b"}, "control byte"),
        ({"x-id": "a\x7f"}, "control byte"),
        ({"x-id": " padded"}, "control byte"),
    ],
)
async def test_request_headers_are_validated_as_uvicorn_validates_them(
    headers: dict[str, str], problem: str
) -> None:
    pool = Http1Pool("http://127.0.0.1:9", 2.0, 4)
    with pytest.raises(ValueError, match=problem):
        await pool.request("GET", "/", headers, None)


async def test_valid_headers_go_out_and_the_pools_own_cannot_be_overridden() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(answer(b"ok"))
        await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        given = {"x-tab": "a\tb", "X-Odd_Name!": "é", "accept-encoding": "gzip", "empty": ""}
        response = await pool.request("GET", "/", given, None)
        assert await response.read() == b"ok"
        response.close()
        await pool.aclose()
    head = state.requests[0].decode("latin-1").split("\r\n")
    assert "x-tab: a\tb" in head and "X-Odd_Name!: é" in head and "empty: " in head
    assert [h for h in head if h.lower().startswith("accept-encoding")] == [
        "accept-encoding: identity"
    ]


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 2\r\n\r\nxx", "gzip"),
        (b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\n\r\nxx", "br"),
        (b"HTTP/1.1 200 OK\r\nx bad: 1\r\ncontent-length: 2\r\n\r\nxx", "malformed"),
        (b"HTTP/1.1 200 OK\r\nx-a\x01: 1\r\ncontent-length: 2\r\n\r\nxx", "malformed"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n", "Length"),
        (b"HTTP/1.1 200 OK\r\nx: " + b"a" * (MAX_HEADER_BYTES + 10), "exceeds"),
        (b"HTTP/1.1 103 Early Hints\r\n\r\n" * (MAX_HEADER_BYTES // 20), "1xx"),
    ],
)
async def test_malformed_or_unbounded_response_heads_are_protocol_errors(
    response: bytes, problem: str
) -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(response)
        await writer.drain()
        await asyncio.sleep(1)

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        with pytest.raises(Http1Error, match=problem) as failed:
            await asyncio.wait_for(pool.request("GET", "/", {}, None), 2)
        assert failed.value.kind == "protocol"
        await pool.aclose()
    # The good case beside them: a head just under the bound, identity spelt out, passes.
    big = b"HTTP/1.1 200 OK\r\ncontent-encoding: identity\r\nx: %s\r\ncontent-length: 2\r\n\r\nok"
    ok = big % (b"a" * (MAX_HEADER_BYTES - 200))

    async def fine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(ok)
        await writer.drain()

    async with serve(fine) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        got = await pool.request("GET", "/", {}, None)
        assert await got.read() == b"ok"
        got.close()
        await pool.aclose()


async def test_read_is_bounded() -> None:
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, state)
            writer.write(answer(b"x" * 5000))
            await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        with pytest.raises(Http1Error, match="exceeds 4999 bytes") as failed:
            await response.read(4999)
        assert failed.value.kind == "too_large"
        response.close()
        assert not pool._idle  # not read to its end: dropped
        response = await pool.request("GET", "/", {}, None)
        assert len(await response.read(5000)) == 5000  # the bound itself is fine
        response.close()
        await pool.aclose()


async def test_a_private_upstreams_ca_bundle_is_a_setting(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(answer(b"trusted"))
        await writer.drain()

    async with serve(handler, tls=server_tls) as state:
        url = f"https://localhost:{state.port}/v1"
        for bundle, works in ((None, False), (cert, True)):
            upstream = make_upstream(ChatSettings(upstream_base_url=url, upstream_ca_bundle=bundle))
            try:
                if works:
                    response = await upstream.request("GET", "/models", None, {})
                    assert await response.read() == b"trusted"
                    await response.close()
                else:
                    with pytest.raises(UpstreamError) as refused:
                        await upstream.request("GET", "/models", None, {})
                    assert refused.value.kind == "connect"
            finally:
                await upstream.aclose()


async def test_bytes_before_any_request_close_a_new_connection() -> None:
    # A server that speaks first (or a port that is not an HTTP server): what it says is
    # no answer to anything, and must not be parsed as the next request's.
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(answer(b"POISON"))
            await writer.drain()
            await asyncio.sleep(1)
            return
        await read_request(reader, state)
        writer.write(answer(b"yours"))
        await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        conn = await pool._connect()
        await asyncio.sleep(0.2)  # its unasked bytes arrive
        assert conn.closed and conn.error is not None and conn.error.kind == "protocol"
        response = await pool.request("GET", "/", {}, None)
        assert await response.read() == b"yours"
        response.close()
        await pool.aclose()


async def test_regression_a_chunked_bodys_trailers_were_unbounded() -> None:
    # After the last (empty) chunk come trailers, parsed like headers: httptools held a
    # trailer's value whole (joining each piece to it: quadratic), unbounded.
    state: Server
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbody\r\n"

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(chunked + b"0\r\nx-trailer: ")
        for _ in range(400):  # 25 MB at most; the client gives up long before
            writer.write(b"a" * 65536)
            await writer.drain()

    async with serve(endless) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        started = time.process_time()
        with pytest.raises(Http1Error, match="trailers") as failed:
            await asyncio.wait_for(response.read(), 5)
        assert failed.value.kind == "protocol"
        assert time.process_time() - started < 1.0
        response.close()
        assert not pool._idle
        await pool.aclose()

    # The happy case beside it: short trailers are read past, and are not headers (a
    # trailer must not change the framing or anything else the response said).
    async def trailers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader, state)
            writer.write(chunked + b"0\r\nx-checksum: abc\r\ncontent-type: text/html\r\n\r\n")
            await writer.drain()

    async with serve(trailers) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        for _ in range(2):
            response = await pool.request("GET", "/", {}, None)
            assert await response.read() == b"body"
            assert "x-checksum" not in response.headers
            assert "content-type" not in response.headers
            response.close()
        assert len(pool._idle) == 1  # read to its end: kept, and reused
        await pool.aclose()
    assert state.connections == 1


async def test_chunk_framing_without_a_body_byte_is_bounded() -> None:
    # A chunk-size line whose extension never ends holds no body byte either.
    state: Server

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader, state)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=")
        for _ in range(400):
            writer.write(b"a" * 65536)
            await writer.drain()

    async with serve(handler) as state:
        pool = Http1Pool(f"http://127.0.0.1:{state.port}", 2.0, 4)
        response = await pool.request("GET", "/", {}, None)
        with pytest.raises(Http1Error) as failed:
            await asyncio.wait_for(response.read(), 5)
        assert failed.value.kind == "protocol"
        response.close()
        await pool.aclose()
