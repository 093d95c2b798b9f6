"""A redis-server of a test module's own (free port, stopped by pid), for runs of jobs under
Redis faults: paused with SIGSTOP, resumed with SIGCONT, killed; and stores on it."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from sluice_services.progress.lease import Timing
from sluice_services.progress.model import Job
from sluice_services.progress.redis_store import RedisStore
from tests.support.procs import Proc, running, start_redis

LEASE, GRACE = 0.6, 0.6
TIMING = Timing(LEASE, GRACE)  # renew every 0.2 s, hold 0.8 s, give up after 1.4 s


@pytest.fixture(scope="module")
def own_redis(log_dir: Path) -> Iterator[Proc]:
    """Not the session's Redis: this one is paused and killed."""
    proc = start_redis(log_dir)
    with running(proc):
        yield proc
        os.kill(proc.pid, signal.SIGCONT)  # never leave it stopped


@asynccontextmanager
async def store_on(proc: Proc) -> AsyncIterator[RedisStore]:
    client = Redis.from_url(proc.extra["url"], socket_timeout=0.5, socket_connect_timeout=0.5)
    store = RedisStore(client, f"sluice:test-faults-{time.time_ns()}", 10_000, 60, grace=GRACE)
    try:
        yield store
    finally:
        await store.close()
        await client.aclose()


async def submit(store: RedisStore, kind: str, params: dict[str, Any]) -> Job:
    """A job created and queued, as the service's ``ArqRunner.submit`` leaves it: out of the
    requeue set, so a reaper's pass does not queue it again before its run starts it."""
    job = Job(kind=kind, params=params, owner="o")
    await store.create(job)
    await store.requeued_done(job.id)
    return job


async def entries(store: RedisStore, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The whole stored history, not stopping at a final event: what really was written."""
    raw = await store.redis.xrange(store.events_key(job_id))
    return [(i.decode(), f[b"type"].decode(), json.loads(f[b"data"])) for i, f in raw]


def assert_one_final_state_agreeing(job: Job, history: list[tuple[str, str, Any]]) -> None:
    finals = [t for _, t, _ in history if t in ("complete", "failed", "cancelled")]
    assert len(finals) == 1, history
    assert history[-1][1] == finals[0]
    assert {"complete": "succeeded"}.get(finals[0], finals[0]) == job.state
    assert job.seq == len(history)
    assert [i for i, _, _ in history] == [f"0-{n}" for n in range(1, len(history) + 1)]
