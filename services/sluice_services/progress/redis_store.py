"""Shared mode: jobs and events in Redis, so any worker or replica serves any job.

A job is a hash (each value JSON), its events a Redis Stream whose entry ids are
``0-<event number>``. Every change of state is one Lua script (``redis_scripts``) that
checks and writes atomically, on Redis's clock. The core's follower
(:mod:`sluice.stream_follower`) reads every stream this process has subscribers for in one
XREAD and fans the events out to them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis

from sluice.stream_follower import FellBehind, Fields, StreamFollower
from sluice_services.progress import redis_scripts
from sluice_services.progress.model import Job, JobEvent
from sluice_services.progress.store import (
    Fenced,
    Renewal,
    final_changes,
    final_data,
    valid_sequence,
)

Ids = list[str]  # (the store's own ``list`` method shadows the builtin in its class)
Args = list[str | int | float]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _pairs(changes: dict[str, Any]) -> list[str]:
    return [item for name, value in changes.items() for item in (name, json.dumps(value))]


def _stream_id(event_id: str) -> str:
    """An event number as given by a client (``7``) as the stream entry id it names."""
    return f"0-{event_id}"


def _final(event: JobEvent) -> bool:
    return event.final


def _event(entry_id: str, fields: Fields) -> JobEvent:
    ms, _, seq = entry_id.partition("-")
    public = seq if ms == "0" else entry_id
    return JobEvent(public, fields[b"type"].decode(), json.loads(fields[b"data"]))


def _job(stored: dict[bytes, bytes] | Sequence[bytes]) -> Job:
    """A job from its hash: HGETALL's dict, or a script's flat list of fields and values."""
    if not isinstance(stored, dict):
        values = iter(stored)
        stored = dict(zip(values, values, strict=True))
    return Job.from_dict({k.decode(): json.loads(v) for k, v in stored.items()})


class RedisStore:
    def __init__(
        self, redis: Redis, prefix: str, max_events: int, retention: int, grace: float = 0.0
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_events = max_events
        self.retention = retention
        self.grace = grace
        self._start = redis.register_script(redis_scripts.START)
        self._renew = redis.register_script(redis_scripts.RENEW)
        self._advance = redis.register_script(redis_scripts.ADVANCE)
        self._cancel_queued = redis.register_script(redis_scripts.CANCEL_QUEUED)
        self._expired = redis.register_script(redis_scripts.EXPIRED)
        self._reap = redis.register_script(redis_scripts.REAP)
        self.follower = StreamFollower(redis, _event)  # one XREAD (and decode) for all here
        self._subscribers = 0

    @property
    def subscribers(self) -> int:
        return self._subscribers

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:jobs:{job_id}"

    def events_key(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def owner_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    def cancel_key(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    @property
    def running_key(self) -> str:
        return f"{self.prefix}:running"

    @property
    def requeue_key(self) -> str:
        return f"{self.prefix}:requeue"

    def valid_event_id(self, value: str) -> bool:
        return valid_sequence(value)  # an event number, as in embedded mode

    async def create(self, job: Job) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            fields = {name: json.dumps(value) for name, value in job.to_dict().items()}
            pipe.hset(self.job_key(job.id), mapping=fields)
            pipe.zadd(self.owner_key(job.owner), {job.id: job.created_at})
            pipe.zremrangebyscore(self.owner_key(job.owner), "-inf", time.time() - self.retention)
            # Until it is queued: if queueing fails, the reaper's next pass queues it.
            pipe.zadd(self.requeue_key, {job.id: job.created_at})
            await pipe.execute()

    async def get(self, job_id: str) -> Job | None:
        stored = await self.redis.hgetall(self.job_key(job_id))  # type: ignore[misc]
        return _job(stored) if stored else None

    async def list(self, owner: str) -> list[Job]:
        ids = await self.redis.zrange(self.owner_key(owner), 0, -1)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw in ids:
                pipe.hgetall(self.job_key(raw.decode()))
            found = await pipe.execute()
        return [_job(stored) for stored in found if stored]

    async def start(
        self, job_id: str, attempt: int, token: str, hold: float, data: dict[str, Any]
    ) -> Job | None:
        keys = [
            self.job_key(job_id),
            self.running_key,
            self.events_key(job_id),
            self.cancel_key(job_id),
        ]
        args: Args = [
            job_id,
            json.dumps(attempt),
            json.dumps(token),
            _ms(hold),
            self.max_events,
            "log",
            json.dumps(data),
            *_pairs({"state": "running", "started_at": data["ts"]}),
        ]
        started = await self._start(keys=keys, args=args)
        if started == 0:  # cancelled while it waited
            await self.cancel_queued(job_id, "cancelled by request")
            return None
        return _job(started) if started else None

    async def renew(self, job_id: str, token: str, hold: float) -> Renewal:
        keys = [self.job_key(job_id), self.running_key, self.cancel_key(job_id)]
        args: Args = [job_id, json.dumps(token), _ms(hold), _ms(self.grace)]
        answer = int(await self._renew(keys=keys, args=args))
        return "held" if answer == 1 else "cancel" if answer == 2 else "lost"

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
        keys = [self.job_key(job_id), self.running_key, self.events_key(job_id)]
        args: Args = [
            job_id,
            json.dumps(token),
            seq,
            _ms(self.grace),
            "1" if final else "0",
            self.max_events,
            self.retention,
            type,
            json.dumps(data),
            *_pairs(changes),
        ]
        if not int(await self._advance(keys=keys, args=args)):
            raise Fenced(f"job {job_id}: event {seq} refused (lease lost or job final)")
        return str(seq)

    async def cancel_queued(self, job_id: str, reason: str) -> bool:
        changes = final_changes("cancelled", time.time(), error=reason)
        keys = [self.job_key(job_id), self.events_key(job_id), self.requeue_key]
        args: Args = [
            job_id,
            self.max_events,
            self.retention,
            "cancelled",
            json.dumps(final_data(changes)),
            *_pairs(changes),
        ]
        return bool(int(await self._cancel_queued(keys=keys, args=args)))

    async def request_cancel(self, job_id: str) -> None:
        # Its own key: never overwritten by the runner's writes, and read by start and renew.
        await self.redis.set(self.cancel_key(job_id), b"1", ex=self.retention)

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.cancel_key(job_id)))

    async def expired(self, count: int = 100) -> Ids:
        """Running jobs whose lease expired more than the grace ago, by Redis's clock."""
        found = await self._expired(keys=[self.running_key], args=[_ms(self.grace), count])
        return [raw.decode() for raw in found]

    async def reap(self, job: Job, retry: bool, message: str) -> bool:
        """Take a lost job from its runner: ``failed``, or ``queued`` for another attempt
        (then listed in the requeue set until :meth:`requeued_done`); False if its lease
        is held after all or it is no longer that attempt's run."""
        now = time.time()
        if retry:
            changes: dict[str, Any] = {"state": "queued", "attempt": job.attempt + 1}
            type, data = "log", {"message": message, "ts": now, "attempt": job.attempt}
        else:
            changes = final_changes("failed", now, error=message)
            type, data = "failed", final_data(changes)
        keys = [
            self.job_key(job.id),
            self.running_key,
            self.events_key(job.id),
            self.requeue_key,
        ]
        args: Args = [
            job.id,
            json.dumps(job.attempt),
            _ms(self.grace),
            "1" if retry else "0",
            self.max_events,
            self.retention,
            type,
            json.dumps(data),
            *_pairs(changes),
        ]
        return bool(int(await self._reap(keys=keys, args=args)))

    async def requeued(self) -> Ids:
        return [raw.decode() for raw in await self.redis.zrange(self.requeue_key, 0, 99)]

    async def requeued_done(self, job_id: str) -> None:
        await self.redis.zrem(self.requeue_key, job_id)

    async def events(self, job_id: str, after: str | None) -> AsyncIterator[JobEvent]:
        entries = self.follower.entries(
            self.events_key(job_id), _stream_id(after) if after else "0-0", _final
        )
        self._subscribers += 1
        try:
            async for _, event in entries:
                yield event
        except FellBehind:
            raise RuntimeError("subscriber fell behind; reconnect to resume") from None
        finally:
            self._subscribers -= 1
            await entries.aclose()

    async def close(self) -> None:
        await self.follower.close()
