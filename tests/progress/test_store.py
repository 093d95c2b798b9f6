"""The stores' transitions, both modes side by side, Redis a real one: fan-out, fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from sluice_services.progress.model import Job
from sluice_services.progress.redis_store import RedisStore
from sluice_services.progress.store import Fenced, JobStore, MemoryStore, final_changes, final_data
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def redis_client(server: Proc) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.extra["url"], socket_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


def redis_store(redis: Redis, grace: float = 0.0) -> RedisStore:
    return RedisStore(redis, f"sluice:test-store-{time.time_ns()}", 1000, 60, grace=grace)


@asynccontextmanager
async def open_store(mode: str, server: Proc) -> AsyncIterator[JobStore]:
    if mode == "memory":
        yield MemoryStore(100, 1000)
        return
    async with redis_client(server) as client:
        built = redis_store(client)
        try:
            yield built
        finally:
            await built.close()


BOTH = pytest.mark.parametrize("mode", ["memory", "redis"])


async def running(store: JobStore, holder: str = "t1", hold: float = 30) -> Job:
    job = Job(kind="simulate", params={}, owner="o")
    await store.create(job)
    started = await store.start(job.id, 1, holder, hold, {"message": "started", "ts": time.time()})
    assert started is not None
    assert started.state == "running"
    return started


async def history(store: JobStore, job_id: str, after: str | None = None) -> list[Any]:
    async def read() -> list[Any]:
        return [(e.id, e.type) async for e in store.events(job_id, after)]

    return await asyncio.wait_for(read(), 5)


def final(state: str, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    changes = final_changes(state, time.time(), **fields)
    return final_data(changes), changes


@BOTH
async def test_first_subscribers_of_a_job_arriving_together_all_hear_live_events(
    mode: str, redis_server: Proc
) -> None:
    """Regression: concurrent first attaches replaced each other's queue sets."""
    async with open_store(mode, redis_server) as store:
        job = await running(store)

        async def collect() -> list[str]:
            return [event.id async for event in store.events(job.id, "1")]

        subscribers = [asyncio.create_task(collect()) for _ in range(20)]
        await asyncio.sleep(0.3)  # all attached, nothing new published yet: only live can deliver
        ids = [
            await store.advance(job.id, "t1", seq, "progress", {"percent": p}, {"percent": p})
            for seq, p in ((2, 10), (3, 50))
        ]
        data, changes = final("succeeded", result=None)
        ids.append(await store.advance(job.id, "t1", 4, "complete", data, changes, final=True))
        results = await asyncio.wait_for(asyncio.gather(*subscribers), 5)
        assert ids == ["2", "3", "4"]
        assert all(result == ids for result in results)


@BOTH
async def test_event_ids_are_event_numbers_and_after_resumes_by_number(
    mode: str, redis_server: Proc
) -> None:
    async with open_store(mode, redis_server) as store:
        job = await running(store)
        for seq in range(2, 6):
            await store.advance(job.id, "t1", seq, "progress", {"percent": seq}, {"percent": seq})
        data, changes = final("succeeded", result=1)
        await store.advance(job.id, "t1", 6, "complete", data, changes, final=True)
        assert store.valid_event_id("5")
        assert not store.valid_event_id("5; drop")
        assert [i for i, _ in await history(store, job.id, "4")] == ["5", "6"]
        stored = await store.get(job.id)
        assert stored is not None
        assert stored.public()["last_event_id"] == "6"


@BOTH
async def test_a_final_state_is_never_overwritten(mode: str, redis_server: Proc) -> None:
    async with open_store(mode, redis_server) as store:
        job = await running(store)
        data, changes = final("succeeded", result={"ok": True})
        await store.advance(job.id, "t1", 2, "complete", data, changes, final=True)
        late_data, late_changes = final("failed", error="no heartbeat")
        with pytest.raises(Fenced):
            await store.advance(job.id, "t1", 3, "failed", late_data, late_changes, final=True)
        with pytest.raises(Fenced):
            await store.advance(job.id, "t1", 3, "progress", {"percent": 1}, {"percent": 1})
        assert not await store.cancel_queued(job.id, "cancelled by request")
        assert await store.renew(job.id, "t1", 30) == "lost"
        assert await store.start(job.id, 1, "t2", 30, {"message": "again", "ts": 0}) is None
        stored = await store.get(job.id)
        assert stored is not None
        assert (stored.state, stored.result, stored.error) == ("succeeded", {"ok": True}, None)
        assert [t for _, t in await history(store, job.id)] == ["log", "complete"]


@BOTH
async def test_a_write_without_the_lease_or_out_of_order_is_refused(
    mode: str, redis_server: Proc
) -> None:
    async with open_store(mode, redis_server) as store:
        job = await running(store, holder="mine")
        with pytest.raises(Fenced):
            await store.advance(job.id, "stale", 2, "progress", {"percent": 1}, {"percent": 1})
        with pytest.raises(Fenced):  # skips an event
            await store.advance(job.id, "mine", 3, "progress", {"percent": 1}, {"percent": 1})
        assert await store.renew(job.id, "stale", 30) == "lost"
        assert await store.renew(job.id, "mine", 30) == "held"
        await store.request_cancel(job.id)
        assert await store.renew(job.id, "mine", 30) == "cancel"


@BOTH
async def test_a_retried_write_whose_reply_was_lost_is_applied_once(
    mode: str, redis_server: Proc
) -> None:
    async with open_store(mode, redis_server) as store:
        job = await running(store)
        first = await store.advance(job.id, "t1", 2, "progress", {"percent": 5}, {"percent": 5})
        again = await store.advance(job.id, "t1", 2, "progress", {"percent": 5}, {"percent": 5})
        assert first == again == "2"
        data, changes = final("succeeded", result=None)
        assert await store.advance(job.id, "t1", 3, "complete", data, changes, final=True) == "3"
        assert await store.advance(job.id, "t1", 3, "complete", data, changes, final=True) == "3"
        assert [i for i, _ in await history(store, job.id)] == ["1", "2", "3"]


@BOTH
async def test_start_only_the_queued_attempt_and_a_cancelled_one_ends_cancelled(
    mode: str, redis_server: Proc
) -> None:
    async with open_store(mode, redis_server) as store:
        job = Job(kind="simulate", params={}, owner="o")
        await store.create(job)
        assert await store.start(job.id, 2, "t", 30, {"message": "s", "ts": 0}) is None
        await store.request_cancel(job.id)
        assert await store.start(job.id, 1, "t", 30, {"message": "s", "ts": 0}) is None
        stored = await store.get(job.id)
        assert stored is not None
        assert stored.state == "cancelled"
        assert [t for _, t in await history(store, job.id)] == ["cancelled"]


@BOTH
async def test_readers_get_copies_never_the_runners_job(mode: str, redis_server: Proc) -> None:
    async with open_store(mode, redis_server) as store:
        job = await running(store)
        seen = await store.get(job.id)
        assert seen is not None
        seen.state = "succeeded"  # a route mutating what it read changes nothing stored
        stored = await store.get(job.id)
        assert stored is not None
        assert stored.state == "running"


async def test_reap_only_when_the_lease_expired_by_redis_clock(
    redis_server: Proc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: leases were worker-clock timestamps compared with the reaper's clock,
    so a reaper whose clock ran ahead (or a worker's behind) reaped live jobs."""
    async with redis_client(redis_server) as redis:
        store = redis_store(redis, grace=0.2)
        job = await running(store, hold=0.5)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this process's clock jumps
        assert await store.expired() == []
        assert not await store.reap(job, False, "lost")
        monkeypatch.undo()
        await asyncio.sleep(0.4)  # expired by Redis's clock, still within the grace
        assert await store.expired() == []
        assert await store.renew(job.id, "t1", 0.5) == "held"  # a renewal in the grace holds
        await asyncio.sleep(0.8)
        assert await store.expired() == [job.id]
        assert await store.renew(job.id, "t1", 0.5) == "lost"  # past the grace: gone for good
        with pytest.raises(Fenced):
            await store.advance(job.id, "t1", 2, "progress", {"percent": 1}, {"percent": 1})
        assert await store.reap(job, False, "the worker stopped responding")
        assert not await store.reap(job, False, "the worker stopped responding")  # once
        stored = await store.get(job.id)
        assert stored is not None
        assert (stored.state, stored.error) == ("failed", "the worker stopped responding")
        assert [t for _, t in await history(store, job.id)] == ["log", "failed"]


async def test_reap_with_a_retry_queues_the_next_attempt_and_fences_the_old(
    redis_server: Proc,
) -> None:
    async with redis_client(redis_server) as redis:
        store = redis_store(redis)
        job = await running(store, holder="old", hold=0.05)
        await store.requeued_done(job.id)  # queued once (created), now running
        assert await store.requeued() == []
        await asyncio.sleep(0.1)
        assert await store.reap(job, True, "retrying (attempt 2)")
        assert await store.requeued() == [job.id]
        with pytest.raises(Fenced):
            await store.advance(job.id, "old", 2, "progress", {"percent": 1}, {"percent": 1})
        again = await store.start(job.id, 2, "new", 30, {"message": "started", "ts": 0})
        assert again is not None
        assert (again.state, again.attempt, again.lease) == ("running", 2, "new")
        assert await store.renew(job.id, "old", 30) == "lost"
        data, changes = final("succeeded", result=None)
        await store.advance(job.id, "new", 4, "complete", data, changes, final=True)
        assert [t for _, t in await history(store, job.id)] == ["log", "log", "log", "complete"]
