"""The stall timer: when waits add up, what resets them, and the hostile cases: re-armed
over and over, stopped, past its moment, a callback that raises."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sluice.timers import StallTimer

pytestmark = pytest.mark.anyio


class Calls:
    def __init__(self) -> None:
        self.at: list[float] = []
        self.called = asyncio.Event()

    def __call__(self) -> None:
        self.at.append(time.monotonic())
        self.called.set()


async def test_a_wait_past_the_timeout_stalls() -> None:
    calls = Calls()
    timer = StallTimer(0.05, calls)
    began = time.monotonic()
    timer.wait_began()
    async with asyncio.timeout(1):
        await calls.called.wait()
    assert timer.stalled
    assert 0.045 <= calls.at[0] - began < 0.2
    timer.stop()


async def test_time_between_waits_never_counts() -> None:
    # The consumer was slow (a client behind backpressure): nothing stalled.
    calls = Calls()
    timer = StallTimer(0.05, calls)
    await asyncio.sleep(0.15)
    assert not calls.at
    began = time.monotonic()
    timer.wait_began()  # the clock starts when the wait does
    await asyncio.sleep(0.02)
    assert not calls.at
    async with asyncio.timeout(1):
        await calls.called.wait()
    assert calls.at[0] - began >= 0.045
    timer.stop()


async def test_each_wait_that_resets_starts_the_count_again() -> None:
    calls = Calls()
    timer = StallTimer(0.08, calls)
    for _ in range(8):  # 8 x 0.03 s waiting: three timeouts in all, never one in a row
        timer.wait_began()
        await asyncio.sleep(0.03)
        timer.wait_ended()
    await asyncio.sleep(0.1)  # not waiting: nothing counts
    assert not calls.at and not timer.stalled
    timer.stop()


async def test_waits_that_do_not_reset_add_up() -> None:
    # A stuck upstream that goes on sending SSE comments: bytes, but no progress.
    calls = Calls()
    timer = StallTimer(0.2, calls)
    for _ in range(3):  # 3 x 0.05 s waiting, with 0.3 s of not waiting between
        timer.wait_began()
        await asyncio.sleep(0.05)
        timer.wait_ended(reset=False)
        await asyncio.sleep(0.3)
    assert not calls.at
    began = time.monotonic()
    timer.wait_began()
    async with asyncio.timeout(1):
        await calls.called.wait()
    assert 0.045 <= calls.at[0] - began < 0.15  # the last 0.05 s of the 0.2 s
    timer.stop()


async def test_a_reset_forgets_the_waits_before_it() -> None:
    calls = Calls()
    timer = StallTimer(0.1, calls)
    timer.wait_began()
    await asyncio.sleep(0.07)
    timer.wait_ended(reset=False)
    timer.wait_began()
    await asyncio.sleep(0.01)
    timer.wait_ended(reset=True)
    timer.wait_began()
    await asyncio.sleep(0.07)  # 0.15 s waited in all, but only 0.07 since the reset
    assert not calls.at
    timer.stop()


async def test_it_fires_once_however_long_the_waits_go_on() -> None:
    calls = Calls()
    timer = StallTimer(0.03, calls)
    timer.wait_began()
    await asyncio.sleep(0.1)
    timer.wait_ended(reset=False)
    timer.wait_began()
    await asyncio.sleep(0.1)
    assert len(calls.at) == 1
    timer.stop()
    timer.stop()  # idempotent, also once it fired


async def test_a_stopped_timer_never_fires() -> None:
    calls = Calls()
    timer = StallTimer(0.03, calls)
    timer.wait_began()
    await asyncio.sleep(0.01)
    timer.stop()
    await asyncio.sleep(0.1)  # the wait is long past its timeout
    assert not calls.at and not timer.stalled
    timer.stop()


async def test_a_stall_noticed_late_between_waits_still_fires_once() -> None:
    # A loop held up past the moment (a wait ended without a reset just as it was due, its
    # check ran after): the waits added up, so it is a stall, and the check does not spin.
    calls = Calls()
    timer = StallTimer(0.05, calls)
    timer.wait_began()
    time.sleep(0.08)  # noqa: ASYNC251 (blocks the loop: the check cannot run in time)
    timer.wait_ended(reset=False)
    async with asyncio.timeout(1):
        await calls.called.wait()
    await asyncio.sleep(0.05)
    assert len(calls.at) == 1
    timer.stop()


async def test_a_callback_that_raises_is_reported_once_and_not_retried() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        await _raising_callback(errors)
    finally:
        loop.set_exception_handler(previous)


async def _raising_callback(errors: list[dict[str, Any]]) -> None:
    raised = []

    def boom() -> None:
        raised.append(time.monotonic())
        raise RuntimeError("the callback failed")

    timer = StallTimer(0.03, boom)
    timer.wait_began()
    await asyncio.sleep(0.15)
    assert len(raised) == 1 and timer.stalled
    (error,) = errors
    assert isinstance(error["exception"], RuntimeError)
    timer.wait_ended()
    timer.wait_began()
    await asyncio.sleep(0.1)
    assert len(raised) == 1
    timer.stop()


async def test_regression_waits_ended_by_bytes_that_say_nothing_never_timed_out() -> None:
    # A stuck model server behind a framework that sends SSE comments (": ping") while idle
    # reset the proxy's stall timer with each: the stream ran on for ever, no error.
    calls = Calls()
    timer = StallTimer(0.2, calls)
    for _ in range(6):  # 6 x 0.06 s of pings: past the timeout in all
        timer.wait_began()
        await asyncio.sleep(0.06)
        if calls.at:
            break
        timer.wait_ended(reset=False)
    assert len(calls.at) == 1
    timer.stop()
