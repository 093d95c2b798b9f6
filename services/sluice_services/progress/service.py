"""The progress service's moving parts: the store, the runner, and (with Redis) the reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job as ArqJob
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluice.runtime import Runtime
from sluice_services.progress.attempt import execute
from sluice_services.progress.kinds import CHECKSUM_FILES, load_checksum_files
from sluice_services.progress.lease import Timing
from sluice_services.progress.metrics import QUEUE_DEPTH
from sluice_services.progress.model import Job
from sluice_services.progress.reaper import reap
from sluice_services.progress.redis_store import RedisStore
from sluice_services.progress.settings import ProgressSettings
from sluice_services.progress.store import JobStore, MemoryStore
from sluice_services.progress.worker import QUEUE, redis_client, redis_store

log = logging.getLogger("progress")


class Runner(Protocol):
    mode: str

    async def submit(self, job: Job) -> None: ...

    async def cancel(self, job: Job) -> None: ...


class LocalRunner:
    """Embedded mode: jobs run as tasks of this (single) worker process."""

    mode = "embedded"

    def __init__(self, store: JobStore, settings: ProgressSettings) -> None:
        self.store = store
        self.settings = settings
        self.timing = Timing(settings.progress_lease, settings.progress_lease_grace)
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, job: Job) -> None:
        run = execute(self.store, job.id, job.attempt, self.timing, self.settings.service_name)
        task = asyncio.get_running_loop().create_task(run)
        self.tasks[job.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job.id, None))

    async def cancel(self, job: Job) -> None:
        task = self.tasks.get(job.id)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


class ArqRunner:
    """Redis mode: jobs go to arq's queue; separate worker processes run them."""

    mode = "redis"

    def __init__(self, pool: ArqRedis, store: RedisStore, timeout: float) -> None:
        self.pool = pool
        self.store = store
        self.timeout = timeout  # arq's client has no socket timeout of its own

    async def submit(self, job: Job) -> None:
        """Queue an attempt. A job is created in the store's requeue set, so one whose
        queueing fails here (Redis went away) is queued by the reaper's next pass."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.pool.enqueue_job(
                    "run_job",
                    job.id,
                    job.attempt,
                    _job_id=f"{job.id}:{job.attempt}",
                    _queue_name=QUEUE,
                )
        except TimeoutError:
            raise RedisTimeoutError("queueing the job timed out") from None
        await self.store.requeued_done(job.id)

    async def cancel(self, job: Job) -> None:
        arq_job = ArqJob(f"{job.id}:{job.attempt}", self.pool, _queue_name=QUEUE)
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await arq_job.abort(timeout=0.01, poll_delay=0.01)

    async def depth(self) -> int:
        return int(await self.pool.zcard(QUEUE))


class ProgressService:
    def __init__(self, runtime: Runtime[ProgressSettings]) -> None:
        settings = runtime.settings
        self.settings = settings
        self.runtime = runtime
        CHECKSUM_FILES.update(load_checksum_files(settings.progress_checksum_files))
        self.store: JobStore
        self.runner: Runner
        if runtime.redis is None:
            self.store = MemoryStore(settings.progress_max_jobs, settings.progress_max_events)
            self.runner = LocalRunner(self.store, settings)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        settings = self.settings
        background: list[asyncio.Task[None]] = []
        pool = None
        if self.runtime.redis is not None:
            # Its own client: every command bounded (the core's waits forever by default).
            store = redis_store(settings, redis_client(settings))
            assert settings.redis_url is not None
            pool = await create_pool(RedisSettings.from_dsn(settings.redis_url))
            runner = ArqRunner(pool, store, settings.redis_timeout)
            self.store, self.runner = store, runner
            loop = asyncio.get_running_loop()
            background.append(loop.create_task(self._reaper(store, runner)))
            background.append(loop.create_task(self._queue_depth(runner)))
        log.info("progress mode", extra={"event": "startup", "mode": self.runner.mode})
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if isinstance(self.runner, LocalRunner):
                await self.runner.close()
            if isinstance(self.store, RedisStore):
                await self.store.close()
                await self.store.redis.aclose()
            if pool is not None:
                await pool.aclose()

    async def _reaper(self, store: RedisStore, runner: ArqRunner) -> None:
        timing = Timing(self.settings.progress_lease, self.settings.progress_lease_grace)
        failing = False
        while True:
            await asyncio.sleep(min(1.0, timing.interval))
            try:
                await reap(store, timing, self.settings.service_name, runner.submit)
            except Exception:
                if not failing:  # once per outage
                    log.warning("reaper pass failed", exc_info=True)
                failing = True
            else:
                failing = False

    async def _queue_depth(self, runner: ArqRunner) -> None:
        gauge = QUEUE_DEPTH.labels(self.settings.service_name)
        while True:
            with contextlib.suppress(Exception):
                gauge.set(await runner.depth())
            await asyncio.sleep(5)
