"""The reaper and running jobs through Redis pauses, on a real redis-server of this
module's own (SIGSTOP, SIGCONT): a pause shorter than lease plus grace loses no job, a
longer one fails each job once, or queues its retry."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sluice_services.progress.attempt import execute
from sluice_services.progress.model import Job
from sluice_services.progress.reaper import reap
from sluice_services.progress.redis_store import RedisStore
from tests.progress.conftest import (
    GRACE,
    LEASE,
    TIMING,
    assert_one_final_state_agreeing,
    entries,
    store_on,
    submit,
)
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def paused(proc: Proc, seconds: float) -> AsyncIterator[None]:
    """Redis stopped for ``seconds`` (or as long as the body takes, if longer)."""
    resume_at = time.monotonic() + seconds
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
        await asyncio.sleep(max(0.0, resume_at - time.monotonic()))
    finally:
        os.kill(proc.pid, signal.SIGCONT)


async def reaper(store: RedisStore, requeued: list[Job], stop: asyncio.Event) -> None:
    async def requeue(job: Job) -> None:
        requeued.append(job)

    while not stop.is_set():
        with contextlib.suppress(Exception):  # Redis away: as the service's, next pass
            await reap(store, TIMING, "test", requeue)
        await asyncio.sleep(0.1)


async def test_a_redis_pause_shorter_than_lease_plus_grace_loses_no_job(own_redis: Proc) -> None:
    """(a): every job ends once, succeeded, its history agreeing with its state."""
    async with store_on(own_redis) as store:
        jobs = [await submit(store, "simulate", {"steps": 40, "delay": 0.03}) for _ in range(8)]
        runs = [asyncio.create_task(execute(store, j.id, 1, TIMING, "test")) for j in jobs]
        stop = asyncio.Event()
        requeued: list[Job] = []
        reaping = asyncio.create_task(reaper(store, requeued, stop))
        await asyncio.sleep(0.3)
        async with paused(own_redis, LEASE + GRACE - 0.3):
            pass
        await asyncio.wait_for(asyncio.gather(*runs), 15)
        await asyncio.sleep(0.5)  # the reaper had its chances
        stop.set()
        await reaping
        for job in jobs:
            stored = await store.get(job.id)
            assert stored is not None
            assert stored.state == "succeeded", stored
            assert_one_final_state_agreeing(stored, await entries(store, job.id))
    assert requeued == []


async def test_a_redis_pause_longer_than_the_lease_fails_each_job_once_or_retries_it(
    own_redis: Proc,
) -> None:
    """(b): runners give up; the reaper fails a job once (or queues its retry); nothing of
    a stale runner follows; never succeeded after failed."""
    async with store_on(own_redis) as store:
        plain = [await submit(store, "simulate", {"steps": 500, "delay": 0.02}) for _ in range(4)]
        retried = [await submit(store, "checksum", {"size_mb": 2000}) for _ in range(2)]
        jobs = plain + retried
        runs = [asyncio.create_task(execute(store, j.id, 1, TIMING, "test")) for j in jobs]
        stop = asyncio.Event()
        requeued: list[Job] = []
        reaping = asyncio.create_task(reaper(store, requeued, stop))
        await asyncio.sleep(0.4)
        paused_at = time.monotonic()
        async with paused(own_redis, TIMING.give_up + 1.0):
            # The runners give up while Redis is still stopped, by their own clocks.
            done, _ = await asyncio.wait(runs, timeout=TIMING.give_up + 0.8)
            assert len(done) == len(runs)
            assert time.monotonic() - paused_at < TIMING.give_up + 0.8
        await asyncio.sleep(1.0)  # the reaper's passes after the pause
        stop.set()
        await reaping
        for job in plain:
            stored = await store.get(job.id)
            history = await entries(store, job.id)
            assert stored is not None
            assert stored.state == "failed"
            assert "stopped responding" in (stored.error or "")
            assert_one_final_state_agreeing(stored, history)
        for job in retried:
            stored = await store.get(job.id)
            history = await entries(store, job.id)
            assert stored is not None
            assert (stored.state, stored.attempt) == ("queued", 2)
            assert history[-1][1] == "log"
            assert "retrying (attempt 2)" in history[-1][2]["message"]
            assert not [t for _, t, _ in history if t in ("complete", "failed", "cancelled")]
    assert sorted(j.id for j in requeued) == sorted(j.id for j in retried)
