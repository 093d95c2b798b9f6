"""nginx's own refusals are JSON, like every other error (the fuzzer found its HTML pages)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, running, start_nginx


@pytest.fixture(scope="module")
def nginx(log_dir: Path) -> Iterator[Proc]:
    proc = start_nginx({}, log_dir)
    with running(proc):
        yield proc


def exchange(proc: Proc, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


CASES = [
    pytest.param(b"TRACE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405, id="trace"),
    pytest.param(b"GET /jobs HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400, id="bad-header"),
    pytest.param(b"GET /jobs HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(
        b"GET /jobs?q=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, id="long-uri"
    ),
    pytest.param(
        b"GET /jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",
        431,
        id="big-header",
    ),
    pytest.param(b"GET /_sluice/uri-too-long HTTP/1.1\r\nHost: x\r\n\r\n", 404, id="internal"),
    pytest.param(b"GET /no/such/route HTTP/1.1\r\nHost: x\r\n\r\n", 404, id="unknown-route"),
]


@pytest.mark.parametrize(("raw", "status"), CASES)
def test_nginx_refusals_are_json(nginx: Proc, raw: bytes, status: int) -> None:
    got, headers, body = exchange(nginx, raw)
    assert got == status, body[:200]
    assert headers.get("content-type") == "application/json", body[:200]
    error = json.loads(body)["error"]
    assert isinstance(error["type"], str) and error["message"]
    assert headers.get("x-request-id")


def test_nginx_healthz_is_still_its_own(nginx: Proc) -> None:
    status, _, body = exchange(nginx, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, json.loads(body)) == (200, {"status": "ok", "service": "nginx"})
