"""Where jobs and their events live: in this process (embedded) or in Redis (shared).

Both give the same promise to a subscriber: ``events(job, after)`` yields every event
after ``after`` (replay), then each new one as it is published (live), in order, with
no gap and no duplicate, and ends after the job's final event.

And the same promise about a job's state: every change is one atomic transition that
also appends its event, so the history a subscriber reads always agrees with ``get``.

* ``start`` moves a queued attempt to ``running`` and gives it a lease, named by a
  fencing token the runner shows with every later write;
* ``advance`` appends a runner's event (and, for the last, its final state) only while
  that token still holds the lease and the event is the next one (``seq``); a retry of
  a write that was applied (its reply lost) is recognised, not applied twice;
* a final state is never overwritten: once a job is final, every write is refused.

Event ids are the job's event numbers (``1``, ``2``, ...) in both modes, so a position
(``Last-Event-ID``, ``?after=``) means the same thing wherever it is used.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from sluice.memory_log import MemoryLog
from sluice_services.progress.model import Job, JobEvent

Renewal = Literal["held", "cancel", "lost"]
"""A lease renewal's answer: renewed; renewed and a cancel was asked; no longer held."""

_SEQUENCE = re.compile(r"^[0-9]{1,18}$")  # ASCII: \d matches any script's digits


class Fenced(Exception):
    """A write refused: its runner no longer holds the job's lease, or the job is final."""


def valid_sequence(value: str) -> bool:
    return bool(_SEQUENCE.match(value))


class JobStore(Protocol):
    async def create(self, job: Job) -> None: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list(self, owner: str) -> list[Job]: ...

    async def start(
        self, job_id: str, attempt: int, token: str, hold: float, data: dict[str, Any]
    ) -> Job | None:
        """``queued`` -> ``running`` with a ``log`` event ``data``, held by ``token`` for
        ``hold`` s; None if the attempt is not (or no longer) the job's queued one or a
        cancel was asked (then the job is ``cancelled``)."""
        ...

    async def renew(self, job_id: str, token: str, hold: float) -> Renewal: ...

    async def advance(
        self,
        job_id: str,
        token: str,
        seq: int,
        type: str,
        data: dict[str, Any],
        changes: dict[str, Any],
        final: bool = False,
    ) -> str:
        """Apply ``changes`` to the job and append event number ``seq``; its id.
        Raises :class:`Fenced` unless ``token`` holds the lease and ``seq`` is next."""
        ...

    async def cancel_queued(self, job_id: str, reason: str) -> bool:
        """``queued`` -> ``cancelled``; False if the job was not queued."""
        ...

    async def request_cancel(self, job_id: str) -> None:
        """Mark a cancel request where the job's runner finds it (never overwritten)."""
        ...

    async def cancel_requested(self, job_id: str) -> bool: ...

    def events(self, job_id: str, after: str | None) -> AsyncIterator[JobEvent]: ...

    def valid_event_id(self, value: str) -> bool: ...

    @property
    def subscribers(self) -> int: ...


def final_changes(state: str, finished_at: float, **fields: Any) -> dict[str, Any]:
    """The job fields a final transition sets."""
    changes: dict[str, Any] = {"state": state, "finished_at": finished_at}
    if state == "succeeded":
        changes["result"] = fields.get("result")
        changes["percent"] = 100.0
    else:
        changes["error"] = fields.get("error")
    return changes


def final_data(changes: dict[str, Any]) -> dict[str, Any]:
    """The final event's data, from the final transition's changes."""
    data: dict[str, Any] = {"ts": changes["finished_at"]}
    if changes["state"] == "succeeded":
        data["result"] = changes["result"]
    else:
        data["error"] = changes["error"]
    return data


def _copy(job: Job) -> Job:
    return Job.from_dict(job.to_dict())  # to_dict copies deeply: no caller shares state


class MemoryStore:
    """Embedded mode: one process holds every job; events are bounded per job.

    The runner is in this process, so a lease is never lost to a reaper here; the same
    fencing still holds (a final state is never overwritten, a write must be the next
    one of the lease's holder), and readers get copies, never the runner's own job."""

    def __init__(self, max_jobs: int, max_events: int) -> None:
        self.max_jobs = max_jobs
        self.max_events = max_events
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._events: MemoryLog[JobEvent] = MemoryLog(max_events)  # the core's, by job id
        self._by: dict[str, str] = {}  # the writer of each job's last event

    @property
    def subscribers(self) -> int:
        return self._events.readers

    def valid_event_id(self, value: str) -> bool:
        return valid_sequence(value)

    async def create(self, job: Job) -> None:
        self._jobs[job.id] = _copy(job)
        self._events.open(job.id)
        while len(self._jobs) > self.max_jobs:
            oldest = next((j for j in self._jobs.values() if j.final), None)
            if oldest is None:
                break
            self._jobs.pop(oldest.id, None)
            self._by.pop(oldest.id, None)
            self._events.drop(oldest.id)

    async def get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return _copy(job) if job is not None else None

    async def list(self, owner: str) -> list[Job]:
        return [_copy(j) for j in self._jobs.values() if j.owner == owner]

    async def start(
        self, job_id: str, attempt: int, token: str, hold: float, data: dict[str, Any]
    ) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.state != "queued" or job.attempt != attempt:
            return None
        if job.cancel_requested:
            await self.cancel_queued(job_id, "cancelled by request")
            return None
        job.lease = token
        await self._append(job, token, "log", data, {"state": "running", "started_at": data["ts"]})
        return _copy(job)

    async def renew(self, job_id: str, token: str, hold: float) -> Renewal:
        job = self._jobs.get(job_id)
        if job is None or job.lease != token or job.state != "running":
            return "lost"
        return "cancel" if job.cancel_requested else "held"

    async def advance(
        self,
        job_id: str,
        token: str,
        seq: int,
        type: str,
        data: dict[str, Any],
        changes: dict[str, Any],
        final: bool = False,
    ) -> str:
        job = self._jobs.get(job_id)
        if job is None:
            raise Fenced(f"job {job_id} is gone")
        if seq == job.seq and self._by.get(job_id) == token:
            return str(seq)  # applied already
        if seq != job.seq + 1 or job.lease != token or job.state != "running":
            raise Fenced(f"job {job_id}: event {seq} refused (state {job.state})")
        await self._append(job, token, type, data, changes)
        if final:
            job.lease = None
        return str(seq)

    async def cancel_queued(self, job_id: str, reason: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.state != "queued":
            return False
        changes = final_changes("cancelled", time.time(), error=reason)
        await self._append(job, "", "cancelled", final_data(changes), changes)
        return True

    async def request_cancel(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel_requested = True

    async def cancel_requested(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.cancel_requested

    async def _append(
        self, job: Job, by: str, type: str, data: dict[str, Any], changes: dict[str, Any]
    ) -> None:
        for name, value in changes.items():
            setattr(job, name, value)
        job.seq += 1
        self._by[job.id] = by
        event = JobEvent(str(job.seq), type, data)
        self._events.append(job.id, event, final=event.final)  # its number is job.seq

    async def events(self, job_id: str, after: str | None) -> AsyncIterator[JobEvent]:
        async for _, event in self._events.read(job_id, int(after) if after else 0):
            yield event
