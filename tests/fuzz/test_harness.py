"""The harness itself, against a deliberately broken server on a real socket: it fails on a
5xx the fuzzer has to find, on an HTML error and on a badly framed stream, and it cuts an
endless stream instead of hanging on it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import schemathesis
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import STREAM_CUT_SHORT_ATTRIBUTE

from tests.fuzz import harness

MAX_CHUNKS = 3000  # an endless stream here still ends: 3000 chunks, 10 ms apart, at most


class Broken(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/boom":  # a 500 only for some inputs: the fuzzer must find it
            n = query.get("n", ["0"])[0]
            if n.lstrip("-").isdigit() and int(n) > 1000:
                self._json(500, {"error": {"type": "internal_error", "message": "boom"}})
            else:
                self._json(200, {"n": n})
        elif url.path == "/html-error":
            self._send(404, "text/html", b"<html>not found</html>")
        elif url.path == "/endless":
            self._stream("text/plain", (b"tick %d\n" % i for i in range(MAX_CHUNKS)))
        elif url.path == "/bad-ndjson":
            lines = (b'{"ok": 1}\n' if i else b"not json\n" for i in range(MAX_CHUNKS))
            self._stream("application/x-ndjson", lines)
        elif url.path == "/finite":
            self._stream("text/plain", (b"line %d\n" % i for i in range(3)))
        else:
            self._json(404, {"error": {"type": "not_found", "message": "no such route"}})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(payload).encode())

    def _send(self, status: int, media: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, media: str, chunks: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", media)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the client cut the stream


@pytest.fixture(scope="module")
def broken() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _stream_op() -> dict[str, Any]:
    return {"responses": {"200": {"description": "a stream"}}}


SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "broken", "version": "1"},
    "paths": {
        "/boom": {
            "get": {
                "parameters": [
                    {"in": "query", "name": "n", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": {"description": "ok", "content": {"application/json": {"schema": {}}}}
                },
            }
        },
        "/html-error": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/endless": {"get": _stream_op()},
        "/bad-ndjson": {"get": _stream_op()},
        "/finite": {"get": _stream_op()},
    },
}


def fuzz(base: str, path: str) -> harness.Tally:
    """The harness as test_openapi runs it, on one operation of the broken server."""
    schema = schemathesis.openapi.from_dict(SCHEMA, config=harness.config(30, coverage=False))
    schema.config.update(base_url=base)
    tally = harness.Tally()
    with harness.BoundedSession() as session:

        def run(case: schemathesis.Case[Any]) -> None:
            harness.call(case, session, {}, tally)

        tests = dict(harness.operation_tests(schema, run))
        tests[f"GET {path}"]()
    return tally


def test_a_5xx_the_fuzzer_must_find_fails_the_run(broken: str) -> None:
    with pytest.raises(FailureGroup) as failed:
        fuzz(broken, "/boom")
    assert "Server error" in str(failed.value) and "[500]" in str(failed.value)


def test_an_error_that_is_not_json_fails_the_run(broken: str) -> None:
    with pytest.raises(FailureGroup) as failed:
        fuzz(broken, "/html-error")
    assert "404 answered text/html, not JSON" in str(failed.value)


def test_a_badly_framed_stream_fails_the_run(broken: str) -> None:
    with pytest.raises(FailureGroup) as failed:
        fuzz(broken, "/bad-ndjson")
    assert "not an NDJSON line: 'not json'" in str(failed.value)


def test_an_endless_stream_is_cut_and_passes(broken: str) -> None:
    started = time.monotonic()
    tally = fuzz(broken, "/endless")
    assert tally.calls >= 1 and tally.cut == tally.calls, tally.summary()
    assert tally.slowest < harness.STREAM_SECONDS + 1, tally.summary()
    assert time.monotonic() - started < 60


def test_bounded_session_reads_a_finite_stream_whole_and_cuts_an_endless_one(
    broken: str,
) -> None:
    with harness.BoundedSession() as session:
        whole = session.get(f"{broken}/finite", timeout=harness.REQUEST_TIMEOUT)
        started = time.monotonic()
        cut = session.get(f"{broken}/endless", timeout=harness.REQUEST_TIMEOUT)
        elapsed = time.monotonic() - started
    assert whole.content == b"line 0\nline 1\nline 2\n"
    assert not getattr(whole, STREAM_CUT_SHORT_ATTRIBUTE, False)
    assert getattr(cut, STREAM_CUT_SHORT_ATTRIBUTE, False)
    assert cut.content.startswith(b"tick 0\ntick 1\n")
    assert harness.STREAM_SECONDS <= elapsed < harness.STREAM_SECONDS + 1


def test_requests_alone_would_hang_on_the_endless_stream(broken: str) -> None:
    """Why the bounded session exists: plain requests reads until its read timeout, which a
    stream that keeps talking never reaches."""
    started = time.monotonic()
    with requests.get(f"{broken}/endless", timeout=1, stream=True) as plain:
        for _ in plain.iter_content(chunk_size=None):
            if time.monotonic() - started > 3:
                break
    assert time.monotonic() - started > 3
