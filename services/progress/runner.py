"""Running one job: its progress events, its heartbeat, its one final event.

The same code runs in the API process (embedded mode) and in the arq job worker (Redis
mode). A running job renews a lease (``progress_lease`` seconds) in Redis; the API's
reaper finds jobs whose lease ran out (their worker died) and fails or retries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from progress.kinds import KINDS, JobFailed
from progress.metrics import EVENTS_PUBLISHED, JOB_DURATION, JOBS_FINISHED, JOBS_LOST
from progress.model import FINAL_EVENT, Job, State
from progress.store import JobStore, RedisStore

log = logging.getLogger("progress.runner")


class Reporter:
    """The ``Progress`` a kind reports through: each call is one published event."""

    def __init__(self, store: JobStore, job: Job, service: str) -> None:
        self.store = store
        self.job = job
        self._published = EVENTS_PUBLISHED.labels(service, job.kind)

    async def update(self, percent: float, step: int | None = None, message: str = "") -> None:
        job = self.job
        job.percent = round(min(100.0, max(0.0, percent)), 3)
        job.step = step
        job.message = message
        data = {"percent": job.percent, "step": step, "message": message, "ts": time.time()}
        await self.store.publish(job, "progress", data)
        self._published.inc()

    async def log(self, message: str) -> None:
        await self.store.publish(self.job, "log", {"message": message, "ts": time.time()})
        self._published.inc()


async def finish(store: JobStore, job: Job, state: State, service: str, **fields: Any) -> None:
    """Move ``job`` to a final state with its one final event."""
    job.state = state
    job.finished_at = time.time()
    data: dict[str, Any] = {"ts": job.finished_at}
    if state == "succeeded":
        job.result = fields.get("result")
        job.percent = 100.0
        data["result"] = job.result
    else:
        job.error = fields.get("error")
        data["error"] = job.error
    await store.publish(job, FINAL_EVENT[state], data)
    EVENTS_PUBLISHED.labels(service, job.kind).inc()
    JOBS_FINISHED.labels(service, job.kind, state).inc()
    if job.started_at is not None:
        JOB_DURATION.labels(service, job.kind).observe(job.finished_at - job.started_at)


async def execute(store: JobStore, job_id: str, attempt: int, lease: float, service: str) -> None:
    """Run one attempt of a job, unless it was cancelled, lost or superseded meanwhile."""
    job = await store.get(job_id)
    if job is None or job.state != "queued" or job.attempt != attempt:
        return
    if await store.cancel_requested(job.id):  # cancelled while it waited in the queue
        return
    kind = KINDS[job.kind]
    job.state = "running"
    job.started_at = time.time()
    heartbeat = None
    if isinstance(store, RedisStore):
        await store.redis.zadd(store.running_key, {job.id: time.time() + lease})
        heartbeat = asyncio.get_running_loop().create_task(_heartbeat(store, job.id, lease))
    reporter = Reporter(store, job, service)
    try:
        await reporter.log(f"started (attempt {attempt})")
        result = await kind.run(kind.params.model_validate(job.params), reporter)
    except asyncio.CancelledError:
        if await store.cancel_requested(job.id):
            job.cancel_requested = True
            await finish(store, job, "cancelled", service, error="cancelled by request")
            return
        raise  # the worker is stopping: the lease runs out and the reaper takes over
    except JobFailed as exc:
        await finish(store, job, "failed", service, error=str(exc))
    except Exception as exc:
        log.exception("job %s failed", job.id)
        await finish(store, job, "failed", service, error=f"{type(exc).__name__}: {exc}")
    else:
        await finish(store, job, "succeeded", service, result=result)
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat


async def _heartbeat(store: RedisStore, job_id: str, lease: float) -> None:
    while True:
        await asyncio.sleep(lease / 3)
        try:
            await store.redis.zadd(store.running_key, {job_id: time.time() + lease}, xx=True)
        except Exception:
            log.warning("heartbeat of job %s failed", job_id, exc_info=True)


async def reap(
    store: RedisStore, lease: float, service: str, requeue: Callable[[Job], Awaitable[None]]
) -> int:
    """Fail (or retry, if its kind allows) every running job whose lease ran out."""
    expired = await store.redis.zrangebyscore(store.running_key, "-inf", time.time())
    reaped = 0
    for raw in expired:
        job_id = raw.decode()
        if not await store.redis.zrem(store.running_key, job_id):
            continue  # another API process took it
        job = await store.get(job_id)
        if job is None or job.final:
            continue
        reaped += 1
        JOBS_LOST.labels(service, job.kind).inc()
        reason = f"the job's worker stopped responding (no heartbeat for {lease:g} s)"
        if job.attempt <= KINDS[job.kind].retries:
            job.attempt += 1
            job.state = "queued"
            await store.publish(
                job,
                "log",
                {"message": f"{reason}; retrying (attempt {job.attempt})", "ts": time.time()},
            )
            await requeue(job)
        else:
            await finish(store, job, "failed", service, error=reason)
    return reaped
