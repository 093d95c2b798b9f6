"""The upstream client's own pieces: the stall timer."""

from __future__ import annotations

import asyncio

import pytest

from chat_proxy.upstream import StallTimer

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
