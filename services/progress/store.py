"""Where jobs and their events live: in this process (embedded) or in Redis (shared).

Both give the same promise to a subscriber: ``events(job, after)`` yields every event
after ``after`` (replay), then each new one as it is published (live), in order, with
no gap and no duplicate, and ends after the job's final event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

from redis.asyncio import Redis

from progress.model import Job, JobEvent

log = logging.getLogger("progress.store")


class JobStore(Protocol):
    async def create(self, job: Job) -> None: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def list(self, owner: str) -> list[Job]: ...

    async def save(self, job: Job) -> None: ...

    async def publish(self, job: Job, type: str, data: dict[str, Any]) -> str:
        """Append an event and save ``job`` with it, atomically; the event's id."""
        ...

    def events(self, job_id: str, after: str | None) -> AsyncIterator[JobEvent]: ...

    def valid_event_id(self, value: str) -> bool: ...

    async def request_cancel(self, job: Job) -> None:
        """Mark a cancel request where the job's runner finds it (never overwritten)."""
        ...

    async def cancel_requested(self, job_id: str) -> bool: ...

    @property
    def subscribers(self) -> int: ...


class MemoryStore:
    """Embedded mode: one process holds every job; events are bounded per job."""

    def __init__(self, max_jobs: int, max_events: int) -> None:
        self.max_jobs = max_jobs
        self.max_events = max_events
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._events: dict[str, list[JobEvent]] = {}
        self._offset: dict[str, int] = {}  # events dropped from the front, per job
        self._changed: dict[str, asyncio.Condition] = {}
        self._subscribers = 0

    @property
    def subscribers(self) -> int:
        return self._subscribers

    def valid_event_id(self, value: str) -> bool:
        return value.isdigit() and len(value) < 19

    async def create(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._events[job.id] = []
        self._offset[job.id] = 0
        self._changed[job.id] = asyncio.Condition()
        while len(self._jobs) > self.max_jobs:
            oldest = next((j for j in self._jobs.values() if j.final), None)
            if oldest is None:
                break
            for table in (self._jobs, self._events, self._offset, self._changed):
                table.pop(oldest.id, None)

    async def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def list(self, owner: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.owner == owner]

    async def save(self, job: Job) -> None:
        self._jobs[job.id] = job

    async def request_cancel(self, job: Job) -> None:
        job.cancel_requested = True
        stored = self._jobs.get(job.id)
        if stored is not None:
            stored.cancel_requested = True

    async def cancel_requested(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.cancel_requested

    async def publish(self, job: Job, type: str, data: dict[str, Any]) -> str:
        events = self._events[job.id]
        number = self._offset[job.id] + len(events) + 1
        events.append(JobEvent(str(number), type, data))
        if len(events) > self.max_events:
            del events[0]
            self._offset[job.id] += 1
        self._jobs[job.id] = job
        condition = self._changed[job.id]
        async with condition:
            condition.notify_all()
        return str(number)

    async def events(self, job_id: str, after: str | None) -> AsyncIterator[JobEvent]:
        condition = self._changed.get(job_id)
        if condition is None:
            return
        self._subscribers += 1
        try:
            last = int(after) if after else 0
            while True:
                events = self._events.get(job_id, [])
                start = max(0, last - self._offset.get(job_id, 0))
                for event in events[start:]:
                    last = int(event.id)
                    yield event
                    if event.final:
                        return
                async with condition:
                    if self._offset.get(job_id, 0) + len(self._events.get(job_id, [])) <= last:
                        await condition.wait()
        finally:
            self._subscribers -= 1


_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


class RedisStore:
    """Shared mode: jobs and events in Redis, so any worker or replica serves any job.

    Events are a Redis Stream per job; a stream entry's id is the SSE event id. One reader
    task per process follows every stream it has subscribers for (one XREAD for all) and
    fans events out to them.
    """

    def __init__(self, redis: Redis, prefix: str, max_events: int, retention: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_events = max_events
        self.retention = retention
        self._queues: dict[str, set[asyncio.Queue[JobEvent | None]]] = {}
        self._positions: dict[str, str] = {}
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._attaching = asyncio.Lock()
        self._subscribers = 0

    @property
    def subscribers(self) -> int:
        return self._subscribers

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events_key(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def owner_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    @property
    def running_key(self) -> str:
        return f"{self.prefix}:running"

    def valid_event_id(self, value: str) -> bool:
        return bool(_STREAM_ID.match(value))

    async def create(self, job: Job) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.job_key(job.id), json.dumps(job.to_dict()))
            pipe.zadd(self.owner_key(job.owner), {job.id: job.created_at})
            pipe.zremrangebyscore(self.owner_key(job.owner), "-inf", time.time() - self.retention)
            await pipe.execute()

    async def get(self, job_id: str) -> Job | None:
        raw = await self.redis.get(self.job_key(job_id))
        return Job.from_dict(json.loads(raw)) if raw else None

    async def list(self, owner: str) -> list[Job]:
        ids = await self.redis.zrange(self.owner_key(owner), 0, -1)
        if not ids:
            return []
        raws = await self.redis.mget([self.job_key(i.decode()) for i in ids])
        return [Job.from_dict(json.loads(r)) for r in raws if r]

    async def save(self, job: Job) -> None:
        await self.redis.set(self.job_key(job.id), json.dumps(job.to_dict()))

    def cancel_key(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    async def request_cancel(self, job: Job) -> None:
        # Its own key: the runner rewrites the job's JSON with every progress event.
        job.cancel_requested = True
        await self.redis.set(self.cancel_key(job.id), b"1", ex=self.retention)

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.cancel_key(job_id)))

    async def publish(self, job: Job, type: str, data: dict[str, Any]) -> str:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.events_key(job.id),
                {"type": type, "data": json.dumps(data)},
                maxlen=self.max_events,
                approximate=True,
            )
            pipe.set(self.job_key(job.id), json.dumps(job.to_dict()))
            if job.final:
                pipe.zrem(self.running_key, job.id)
                pipe.expire(self.job_key(job.id), self.retention)
                pipe.expire(self.events_key(job.id), self.retention)
            results = await pipe.execute()
        event_id: bytes = results[0]
        return event_id.decode()

    async def events(self, job_id: str, after: str | None) -> AsyncIterator[JobEvent]:
        key = self.events_key(job_id)
        queue: asyncio.Queue[JobEvent | None] = asyncio.Queue(maxsize=10_000)
        await self._attach(key, queue)  # before the replay: nothing falls in between
        self._subscribers += 1
        try:
            last = after or "0-0"
            while True:  # replay, in pages
                page = await self.redis.xrange(key, min=f"({last}", count=500)
                for entry_id, fields in page:
                    event = _event(entry_id, fields)
                    last = event.id
                    yield event
                    if event.final:
                        return
                if len(page) < 500:
                    break
            while True:  # live, skipping what the replay already gave
                item = await queue.get()
                if item is None:
                    raise RuntimeError("subscriber fell behind; reconnect to resume")
                if _id_key(item.id) <= _id_key(last):
                    continue
                last = item.id
                yield item
                if item.final:
                    return
        finally:
            self._subscribers -= 1
            self._detach(key, queue)

    async def _attach(self, key: str, queue: asyncio.Queue[JobEvent | None]) -> None:
        # Serialised: two first subscribers of one job must not both create its queue set
        # (the second would drop the first's queue, which then never hears a live event).
        async with self._attaching:
            if key not in self._queues:
                newest = await self.redis.xrevrange(key, count=1)
                self._positions[key] = newest[0][0].decode() if newest else "0-0"
                self._queues[key] = set()
            self._queues[key].add(queue)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        self._wake.set()

    def _detach(self, key: str, queue: asyncio.Queue[JobEvent | None]) -> None:
        queues = self._queues.get(key)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[key]
                self._positions.pop(key, None)

    async def _read(self) -> None:
        """The one reader of this process: every followed stream in one blocking XREAD."""
        while True:
            if not self._queues:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams = dict(self._positions)
            try:
                # A short block, so streams followed since are picked up quickly.
                replies = await self.redis.xread(streams, block=250, count=1000)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event reader failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for raw_key, entries in replies or ():
                key = raw_key.decode()
                queues = self._queues.get(key)
                for entry_id, fields in entries:
                    event = _event(entry_id, fields)
                    if key in self._positions:
                        self._positions[key] = event.id
                    for queue in list(queues or ()):
                        try:
                            queue.put_nowait(event)
                        except asyncio.QueueFull:  # a stuck subscriber: let it resume later
                            with contextlib.suppress(asyncio.QueueFull):
                                queue.get_nowait()
                                queue.put_nowait(None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> JobEvent:
    return JobEvent(entry_id.decode(), fields[b"type"].decode(), json.loads(fields[b"data"]))
