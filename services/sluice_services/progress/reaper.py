"""Reaping lost jobs (Redis mode): a running job whose lease really expired is failed, or
queued again if its kind allows retries.

Each API process runs a pass every ``min(1, L/3)`` s (:mod:`progress.service`); when a
lease counts as expired is :mod:`progress.lease`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sluice_services.progress.kinds import KINDS
from sluice_services.progress.lease import Timing
from sluice_services.progress.metrics import JOBS_FINISHED, JOBS_LOST
from sluice_services.progress.model import Job
from sluice_services.progress.redis_store import RedisStore


async def reap(
    store: RedisStore, timing: Timing, service: str, requeue: Callable[[Job], Awaitable[None]]
) -> int:
    """Fail (or retry, if its kind allows) every running job whose lease really expired."""
    for job_id in await store.requeued():  # what an earlier pass took but could not queue
        job = await store.get(job_id)
        if job is not None and job.state == "queued":
            await requeue(job)
        await store.requeued_done(job_id)
    reaped = 0
    reason = f"the job's worker stopped responding (no heartbeat for {timing.give_up:g} s)"
    for job_id in await store.expired():
        job = await store.get(job_id)
        if job is None or job.final:  # a stale entry: nothing can make such a job run again
            await store.redis.zrem(store.running_key, job_id)
            continue
        kind = KINDS.get(job.kind)
        retry = kind is not None and job.attempt <= kind.retries
        message = f"{reason}; retrying (attempt {job.attempt + 1})" if retry else reason
        if not await store.reap(job, retry, message):
            continue  # renewed meanwhile, or another API process took it
        reaped += 1
        JOBS_LOST.labels(service, job.kind).inc()
        if retry:
            job.attempt += 1
            job.state = "queued"
            await requeue(job)
            await store.requeued_done(job.id)
        else:
            JOBS_FINISHED.labels(service, job.kind, "failed").inc()
    return reaped
