"""The Redis store against a real Redis: fan-out and its races."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from progress.model import Job
from progress.store import RedisStore
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio


async def test_first_subscribers_of_a_job_arriving_together_all_hear_live_events(
    redis_server: Proc,
) -> None:
    """Regression: concurrent first attaches replaced each other's queue sets."""
    redis = Redis.from_url(redis_server.extra["url"])
    store = RedisStore(redis, "sluice:test-attach", 1000, 60)
    job = Job(kind="simulate", params={}, owner="o")
    await store.create(job)

    async def collect() -> list[str]:
        return [event.id async for event in store.events(job.id, None)]

    subscribers = [asyncio.create_task(collect()) for _ in range(20)]
    await asyncio.sleep(0.3)  # all attached, nothing published yet: only live can deliver
    ids = [await store.publish(job, "progress", {"percent": p}) for p in (10, 50)]
    job.state = "succeeded"
    ids.append(await store.publish(job, "complete", {"result": None}))
    results = await asyncio.wait_for(asyncio.gather(*subscribers), 5)
    await store.close()
    await redis.aclose()
    assert all(result == ids for result in results)
