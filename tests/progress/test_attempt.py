"""One attempt of a job and its lease, on a real redis-server of this module's own: a lease
taken over stops it, a cancel does not cut its final write."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from sluice_services.progress.attempt import execute
from tests.progress.conftest import (
    TIMING,
    assert_one_final_state_agreeing,
    entries,
    store_on,
    submit,
)
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio


async def test_a_runner_whose_lease_is_taken_stops_and_publishes_nothing_more(
    own_redis: Proc,
) -> None:
    """Regression: the runner never checked its lease; a reaped job ran on and finished."""
    async with store_on(own_redis) as store:
        job = await submit(store, "simulate", {"steps": 400, "delay": 0.01})
        run = asyncio.create_task(execute(store, job.id, 1, TIMING, "test"))
        await asyncio.sleep(0.3)
        await store.redis.zadd(store.running_key, {job.id: 0})  # expired, as if paused
        assert await store.reap(job, False, "taken over")
        taken = time.monotonic()
        await asyncio.wait_for(run, 2)  # it returns: the job is not its own any more
        stopped = time.monotonic() - taken
        count = len(await entries(store, job.id))
        await asyncio.sleep(0.3)
        history = await entries(store, job.id)
        stored = await store.get(job.id)
    assert stopped < 0.3  # at its next publish (10 ms) or heartbeat (0.2 s)
    assert len(history) == count
    assert stored is not None
    assert (stored.state, stored.error) == ("failed", "taken over")
    assert_one_final_state_agreeing(stored, history)


async def test_regression_a_cancel_during_the_final_write_left_a_finished_job_to_be_reaped(
    own_redis: Proc,
) -> None:
    # arq's abort cancels the job's task even while it writes its final event: the write was
    # cut, and the finished job was reaped a lease later as "failed: worker stopped".
    async with store_on(own_redis) as store:
        job = await submit(store, "simulate", {"steps": 2, "delay": 0})
        final_write = asyncio.Event()
        real_advance = store.advance

        async def slow_final(*args: Any, **kwargs: Any) -> Any:
            if args[-1] is True or kwargs.get("final"):  # the final event: slow, as under load
                final_write.set()
                await asyncio.sleep(0.3)
            return await real_advance(*args, **kwargs)

        store.advance = slow_final  # type: ignore[method-assign]
        run = asyncio.create_task(execute(store, job.id, 1, TIMING, "test"))
        await asyncio.wait_for(final_write.wait(), 5)
        run.cancel()  # as arq's abort does
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run, 5)
        stored = await store.get(job.id)
        history = await entries(store, job.id)
    assert stored is not None and stored.state == "succeeded", stored
    assert_one_final_state_agreeing(stored, history)


async def test_a_quiet_runner_is_stopped_by_its_heartbeat_when_the_lease_is_taken(
    own_redis: Proc,
) -> None:
    async with store_on(own_redis) as store:
        job = await submit(store, "simulate", {"steps": 2, "delay": 30})
        run = asyncio.create_task(execute(store, job.id, 1, TIMING, "test"))
        await asyncio.sleep(0.1)
        await store.redis.zadd(store.running_key, {job.id: 0})
        assert await store.reap(job, False, "taken over")
        taken = time.monotonic()
        await asyncio.wait([run], timeout=5)
        stopped = time.monotonic() - taken
        history = await entries(store, job.id)
    assert run.done()
    assert stopped < TIMING.interval + 0.3  # its next renewal, not the end of its 30 s sleep
    assert [t for _, t, _ in history] == ["log", "failed"]
