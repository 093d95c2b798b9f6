"""The upstream client's own pieces: the stall timer, the pooled clients."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from chat_proxy.upstream import StallTimer, make_upstream
from tests.support.procs import free_port

pytestmark = pytest.mark.anyio


async def test_stall_timer_fails_a_read_waiting_past_the_timeout() -> None:
    stalled = asyncio.Event()
    timer = StallTimer(0.05, stalled.set)
    timer.reading()
    async with asyncio.timeout(1):
        await stalled.wait()
    timer.stop()


async def test_stall_timer_ignores_time_spent_not_reading() -> None:
    # The consumer was slow (a client behind backpressure): the upstream is not stalled.
    stalled = asyncio.Event()
    timer = StallTimer(0.05, stalled.set)
    await asyncio.sleep(0.15)
    assert not stalled.is_set()
    timer.reading()  # the clock starts when the read does
    await asyncio.sleep(0.02)
    assert not stalled.is_set()
    async with asyncio.timeout(1):
        await stalled.wait()
    timer.stop()


async def test_stall_timer_is_rearmed_by_each_byte() -> None:
    stalled = asyncio.Event()
    timer = StallTimer(0.08, stalled.set)
    for _ in range(5):
        timer.reading()
        await asyncio.sleep(0.03)
        timer.got_bytes()
    assert not stalled.is_set()
    timer.stop()


@pytest.mark.parametrize("client", ["native", "aiohttp", "httpx"])
async def test_regression_cookies_an_upstream_set_went_out_with_the_next_callers_request(
    client: str,
) -> None:
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
    # By name, not address: aiohttp's default jar ignores cookies from bare IP addresses.
    upstream = make_upstream(client, f"http://localhost:{port}/v1", 2.0, 2.0, 4)
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
