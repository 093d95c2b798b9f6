"""A service port does not trust its client: a real gunicorn worker (deploy/gunicorn.conf.py,
as make run, compose and k8s start it) bounds request-head size and time."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import Proc, start_service

HEADER_TIMEOUT = 2.0
MAX_HEADER_BYTES = 65_536


@pytest.fixture(scope="module")
def demo(log_dir: Path) -> Iterator[Proc]:
    env = {"SLUICE_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "SLUICE_RATE_LIMIT": "100000/minute"}
    proc = start_service("demo", log_dir, env, workers=1)
    yield proc
    proc.stop()


def connect(proc: Proc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proc.port), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything until the server closes (EOF); fails if it does not within ``timeout``."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def send_head(proc: Proc, head: bytes) -> bytes:
    with connect(proc) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)  # refused mid-way: the answer is still readable
        return read_all(sock)


def request(path: str = "/healthz", headers: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"


def assert_431(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "request_header_fields_too_large"
    assert str(MAX_HEADER_BYTES) in error["message"]


def test_a_one_megabyte_header_gets_431_and_the_connection_is_closed(demo: Proc) -> None:
    big = b"X-Big: " + b"a" * 1_048_576 + b"\r\n"
    assert_431(send_head(demo, request(headers=big)))  # read_all returned: closed


def test_a_one_megabyte_url_gets_431(demo: Proc) -> None:
    assert_431(send_head(demo, request("/healthz?" + "a" * 1_048_576)))


def test_many_small_headers_over_the_limit_in_one_packet_get_431(demo: Proc) -> None:
    # each header small, as nginx would pass it; the whole head over the limit, complete
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
    assert_431(send_head(demo, request(headers=headers)))


def test_a_head_under_the_limit_is_served(demo: Proc) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(50))  # ~51 KB
    answer = send_head(demo, request(headers=headers + b"Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_slowloris_connections_are_closed_and_normal_requests_still_served(demo: Proc) -> None:
    count = 200
    socks = [connect(demo) for _ in range(count)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.send(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        open_ = set(socks)
        served = []
        deadline = started + HEADER_TIMEOUT + 5
        next_byte = started + 1
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_), [], [], 0.1)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert data == b"", data[:100]  # no answer: just closed
                open_.discard(sock)
            if time.monotonic() >= next_byte:  # one byte a second, as slowloris does
                next_byte += 1
                for sock in list(open_):
                    try:
                        sock.send(b"X")
                    except OSError:
                        open_.discard(sock)
                started_request = time.monotonic()
                normal = httpx.get(f"{demo.url}/healthz", timeout=5)
                served.append((normal.status_code, time.monotonic() - started_request))
        elapsed = time.monotonic() - started
        assert not open_, f"{len(open_)} of {count} slowloris connections still open"
        assert elapsed < HEADER_TIMEOUT + 2, elapsed
        assert served and all(status == 200 for status, _ in served), served
        assert max(took for _, took in served) < 1.0, served
    finally:
        for sock in socks:
            sock.close()


def test_a_keep_alive_connection_dribbling_its_next_request_is_closed(demo: Proc) -> None:
    with connect(demo) as sock:
        sock.sendall(request())
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first[:200]
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < HEADER_TIMEOUT + 3:
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            readable, _, _ = select.select([sock], [], [], 0.5)
            try:
                if readable and sock.recv(4096) == b"":
                    closed = True
                    break
            except ConnectionResetError:  # closed with our bytes unread: a reset, not a FIN
                closed = True
                break
        assert closed
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_a_silent_connection_is_closed(demo: Proc) -> None:
    with connect(demo) as sock:
        started = time.monotonic()
        assert read_all(sock, timeout=HEADER_TIMEOUT + 3) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_regression_a_declared_body_that_never_came_held_its_connection(demo: Proc) -> None:
    # Content-Length: 100 and silence: held for as long as the client liked (30 s and more).
    head = b"POST /auth/stream-token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(demo) as sock:
        sock.sendall(head + b"Content-Length: 100\r\n\r\n{")
        started = time.monotonic()
        read_all(sock, timeout=HEADER_TIMEOUT + 5)  # closed by the server, answered or not
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_a_body_that_keeps_coming_is_not_cut(demo: Proc) -> None:
    # the body's bound is on silence, not on its whole time: a slow, steady upload is fine
    body = b'{"path": "/dummy-events"' + b" " * 30 + b"}"
    head = b"POST /auth/stream-token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(demo) as sock:
        sock.sendall(head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        started = time.monotonic()
        for i in range(0, len(body), 8):
            sock.sendall(body[i : i + 8])
            time.sleep(HEADER_TIMEOUT / 3)
        answer = read_all(sock)
    assert time.monotonic() - started > HEADER_TIMEOUT  # took longer than the bound, whole
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]  # read to its end, then judged


def test_a_stream_outlives_the_header_timeout(demo: Proc) -> None:
    # /dummy-counter takes 10 x 0.5 s: longer than the head deadline, which ends at the headers
    started = time.monotonic()
    body = httpx.get(f"{demo.url}/dummy-counter", timeout=20).text
    assert time.monotonic() - started > HEADER_TIMEOUT
    assert body.splitlines()[-1] == "Count: 10"


def test_a_service_refuses_the_examples_placeholder_key_at_start(log_dir: Path) -> None:
    # what compose's .env and k8s' secrets.env hold until the user sets a key of their own
    env = {"SLUICE_API_KEYS": "sk-test-real-one,sk-change-me-before-use"}
    with pytest.raises(RuntimeError, match="exited") as failed:
        start_service("demo", log_dir, env, workers=1)
    assert "an API key is the examples' placeholder (sk-change-me...)" in str(failed.value)
    assert "sk-test-real-one" not in str(failed.value)
