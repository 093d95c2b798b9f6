"""The upstream client's own pieces: the pooled client, its settings (its stall timer is the
core's: tests/sluice/test_timers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import ValidationError

from sluice_services.chat_proxy.frames import CommentTracker, FrameTooLarge, SseSplitter
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.upstream import EOF_MAX_BYTES, Upstream, first_chunk
from tests.support.procs import free_port

pytestmark = pytest.mark.anyio


def test_settings_of_the_one_client(tmp_path: Path) -> None:
    assert "upstream_client" not in ChatSettings.model_fields  # aiohttp/httpx are gone
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used here")
    assert ChatSettings(upstream_ca_bundle=bundle).upstream_ca_bundle == bundle
    assert ChatSettings(upstream_ca_bundle="").upstream_ca_bundle is None
    with pytest.raises(ValidationError):
        ChatSettings(upstream_ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(ValidationError):
        ChatSettings(upstream_ca_bundle=tmp_path)  # a directory
    with pytest.raises(ValidationError):
        ChatSettings(upstream_max_event_bytes=10)
    with pytest.raises(ValidationError):
        ChatSettings(upstream_max_response_bytes=0)


async def test_regression_cookies_an_upstream_set_went_out_with_the_next_callers_request() -> None:
    # One pooled client serves every caller: a Set-Cookie from the model server (a load
    # balancer's session cookie, say) was kept and sent with other callers' requests.
    seen: list[str | None] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "caller-one")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    upstream = Upstream(f"http://localhost:{port}/v1", 2.0, 2.0, 4)
    try:
        for _ in range(2):
            response = await upstream.request("POST", "/chat/completions", b"{}", {})
            assert response.header("set-cookie") is not None
            await response.read()
            await response.close()
    finally:
        await upstream.aclose()
        await runner.cleanup()
    assert seen == [None, None]


@pytest.mark.parametrize(
    ("chunks", "said"),
    [
        ([b'data: {"x":1}\n\n'], [True]),
        ([b": ping\n\n", b": ping\n\n"], [False, False]),
        ([b": pi", b"ng\n\n", b"data: 1\n\n"], [False, False, True]),  # split inside a comment
        ([b"da", b"ta: 1\n\n"], [True, True]),  # split inside an event line
        ([b": ping\r\n\r\n", b"\r\n"], [False, False]),
        ([b": ping\n\ndata: 1\n\n"], [True]),  # a comment, then an event, in one chunk
        ([b"\n", b"retry: 5\n\n"], [False, True]),  # a retry field is the upstream speaking
        # Bare CR line ends (SSE allows them), and a CRLF cut between its CR and its LF.
        ([b": ping\r\r", b": ping\r\r", b"data: 1\r\r"], [False, False, True]),
        ([b": ping\r", b"\r", b"data: 1\r\r"], [False, False, True]),
        ([b": ping\r", b"\n\r", b"\n: pong\r\n"], [False, False, False]),
        ([b": ping\rdata: 1\r\r"], [True]),  # was: one comment line, "said nothing"
        ([b""], [False]),
    ],
)
def test_comments_are_told_from_events_across_chunk_boundaries(
    chunks: list[bytes], said: list[bool]
) -> None:
    tracker = CommentTracker()
    assert [tracker.says_something(c) for c in chunks] == said


async def from_list(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_first_chunk_holds_comments_until_the_first_event() -> None:
    assert await first_chunk(from_list([b"", b": ping\n\n", b"data: 1\n\n", b"x"])) == (
        b": ping\n\ndata: 1\n\n"
    )
    assert await first_chunk(from_list([b"data: 1\n\n"])) == b"data: 1\n\n"
    assert await first_chunk(from_list([])) is None
    assert await first_chunk(from_list([b": only\n\n"])) == b": only\n\n"  # then its end
    # Hostile: endless comments start the stream past a bound (the stall timer ends it).
    ping = b": " + b"p" * 1000 + b"\n\n"
    got = await first_chunk(from_list([ping] * 1000))
    assert got is not None and EOF_MAX_BYTES < len(got) <= EOF_MAX_BYTES + len(ping)


def test_an_event_that_never_ends_is_refused_at_its_bound() -> None:
    splitter = SseSplitter(max_bytes=1024)
    assert splitter.feed(b"data: " + b"a" * 1000 + b"\n\n") != []  # under the bound: fine
    splitter.feed(b"data: " + b"a" * 1000)
    with pytest.raises(FrameTooLarge):
        splitter.feed(b"a" * 100)  # one line past 1024 bytes, no blank line yet
    splitter = SseSplitter(max_bytes=1024)
    with pytest.raises(FrameTooLarge):  # a whole event, but too big, in one chunk
        splitter.feed(b"data: " + b"a" * 2000 + b"\n\n")
    splitter = SseSplitter(max_bytes=1024)
    with pytest.raises(FrameTooLarge):  # among others in one chunk
        splitter.feed(b"data: 1\n\n" + b"data: " + b"a" * 2000 + b"\n\ndata: 2\n\n")
