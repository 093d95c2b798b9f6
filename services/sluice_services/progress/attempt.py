"""Running one attempt of a job: its progress events, its lease, its one final event.

The same code runs in the API process (embedded mode) and in the arq job worker (Redis
mode). The attempt holds its job by a lease (:mod:`progress.lease`): it renews it, writes
only while it holds it, and stops, publishing nothing more, once it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from redis.exceptions import RedisError

from sluice_services.progress.kinds import KINDS, JobFailed, Kind
from sluice_services.progress.lease import Timing
from sluice_services.progress.metrics import EVENTS_PUBLISHED, JOB_DURATION, JOBS_FINISHED
from sluice_services.progress.model import FINAL_EVENT, Job, State
from sluice_services.progress.store import Fenced, JobStore, final_changes, final_data

log = logging.getLogger("progress.attempt")

# What a store call may raise while Redis is away: retried until the lease is given up.
UNREACHABLE = (RedisError, OSError, TimeoutError)


class Reporter:
    """The ``Progress`` a kind reports through: each call is one published event."""

    def __init__(self, run: JobRun) -> None:
        self.run = run

    async def update(self, percent: float, step: int | None = None, message: str = "") -> None:
        percent = round(min(100.0, max(0.0, percent)), 3)
        data = {"percent": percent, "step": step, "message": message}
        await self.run.report(
            "progress", data, {"percent": percent, "step": step, "message": message}
        )

    async def log(self, message: str) -> None:
        await self.run.report("log", {"message": message}, {})


class JobRun:
    """One attempt of a job, from its start to its final event (or the loss of its lease)."""

    def __init__(
        self,
        store: JobStore,
        job: Job,
        token: str,
        timing: Timing,
        service: str,
        renewed: float,
    ) -> None:
        self.store = store
        self.job = job
        self.token = token
        self.timing = timing
        self.service = service
        self.seq = job.seq
        self.renewed = renewed  # monotonic: when the last renewal that succeeded was sent
        self.lost: str | None = None
        self.cancel_seen = False
        self.finishing = False
        self.task = asyncio.current_task()
        self._published = EVENTS_PUBLISHED.labels(service, job.kind)
        self._unreachable_logged = False

    @property
    def deadline(self) -> float:
        return self.renewed + self.timing.give_up

    async def run(self, kind: Kind) -> None:
        beat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            try:
                state, fields = await self._work(kind)
            except asyncio.CancelledError:
                if self.lost is not None:
                    self._uncancel()
                    return  # the job is another runner's, or the reaper's: say nothing
                if self.cancel_seen or await self._cancel_requested():
                    self._uncancel()
                    await self.finish("cancelled", error="cancelled by request")
                    return
                raise  # the worker is stopping: the lease runs out and the reaper takes over
            await self.finish(state, **fields)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _work(self, kind: Kind) -> tuple[State, dict[str, Any]]:
        try:
            result = await kind.run(kind.params.model_validate(self.job.params), Reporter(self))
        except JobFailed as exc:
            return "failed", {"error": str(exc)}
        except Exception as exc:
            log.exception("job %s failed", self.job.id)
            return "failed", {"error": f"{type(exc).__name__}: {exc}"}
        return "succeeded", {"result": result}

    async def report(self, type: str, data: dict[str, Any], changes: dict[str, Any]) -> None:
        """A kind's event; a runner that lost its lease stops here (as if cancelled)."""
        stamped = {**data, "attempt": self.job.attempt, "ts": time.time()}
        if not await self._send(type, stamped, changes):
            raise asyncio.CancelledError(self.lost)

    async def finish(self, state: State, **fields: Any) -> None:
        """The job's one final event, with its final state."""
        self.finishing = True  # from here the heartbeat no longer interrupts
        changes = final_changes(state, time.time(), **fields)
        data = final_data(changes)
        # Shielded: a cancel landing now (arq's abort, a shutdown) must not leave the final
        # write half done, or a finished job would be reaped as "failed" a lease later. The
        # write is bounded by the lease deadline; then the cancel goes on.
        writing = asyncio.ensure_future(self._send(FINAL_EVENT[state], data, changes, final=True))
        try:
            sent = await asyncio.shield(writing)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await writing
            raise
        if not sent:
            return
        JOBS_FINISHED.labels(self.service, self.job.kind, state).inc()
        if self.job.started_at is not None:
            JOB_DURATION.labels(self.service, self.job.kind).observe(
                changes["finished_at"] - self.job.started_at
            )

    async def _send(
        self, type: str, data: dict[str, Any], changes: dict[str, Any], final: bool = False
    ) -> bool:
        """Publish the next event, retrying while Redis is away; False if the lease is lost."""
        seq = self.seq + 1
        delay = 0.05
        while self.lost is None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._lose(f"Redis unreachable for {self.timing.give_up:g} s")
                break
            try:
                async with asyncio.timeout(left):
                    await self.store.advance(
                        self.job.id, self.token, seq, type, data, changes, final
                    )
            except Fenced:
                self._lose("its lease was taken over (expired, or the job ended)")
                break
            except UNREACHABLE:
                self._unreachable()
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            self.seq = seq
            self._published.inc()
            return True
        return False

    async def _heartbeat(self) -> None:
        failing = False
        while self.lost is None:
            await asyncio.sleep(
                min(0.25, self.timing.interval) if failing else self.timing.interval
            )
            sent = time.monotonic()
            if sent > self.deadline:
                self._lose(f"Redis unreachable for {self.timing.give_up:g} s", interrupt=True)
                return
            try:
                async with asyncio.timeout(self.deadline - sent):
                    answer = await self.store.renew(self.job.id, self.token, self.timing.hold)
            except UNREACHABLE:
                self._unreachable()
                failing = True
                continue
            failing = False
            if answer == "lost":
                self._lose("its lease was taken over (expired, or the job ended)", interrupt=True)
                return
            self.renewed = sent
            if answer == "cancel" and not self.cancel_seen:
                self.cancel_seen = True  # arq's abort, or the local task's cancel, may miss
                self._interrupt()

    def _lose(self, reason: str, interrupt: bool = False) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        log.warning(
            "job %s (attempt %s) lost its lease: %s; stopped, publishing nothing more",
            self.job.id,
            self.job.attempt,
            reason,
            extra={"event": "lease_lost", "job_id": self.job.id, "attempt": self.job.attempt},
        )
        if interrupt:
            self._interrupt()

    def _interrupt(self) -> None:
        if self.task is not None and not self.finishing:
            self.task.cancel()

    def _uncancel(self) -> None:
        if self.task is not None:
            self.task.uncancel()

    def _unreachable(self) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("job %s: Redis unreachable; retrying", self.job.id, exc_info=True)

    async def _cancel_requested(self) -> bool:
        try:
            async with asyncio.timeout(max(0.01, self.deadline - time.monotonic())):
                return await self.store.cancel_requested(self.job.id)
        except UNREACHABLE:
            return False


async def execute(store: JobStore, job_id: str, attempt: int, timing: Timing, service: str) -> None:
    """Run one attempt of a job, unless it was cancelled, lost or superseded meanwhile."""
    token = uuid.uuid4().hex
    sent = time.monotonic()
    data = {"message": f"started (attempt {attempt})", "attempt": attempt, "ts": time.time()}
    job = await store.start(job_id, attempt, token, timing.hold, data)
    if job is None:
        return
    kind = KINDS[job.kind]
    await JobRun(store, job, token, timing, service, sent).run(kind)
