"""Where resumable answers are kept: their events, as relayed, and who may read them.

An answer is an owner (the caller key that started it), a creation time and its events,
numbered ``1``, ``2``, ...: each one SSE event of the upstream's stream as the client got it
(without an ``id:``: readers add theirs, the event's number). The last event of an answer is
marked final: ``[DONE]``, the Responses API's end, or the error event it ended with. Both
stores give a reader the same promise as progress's: every event after a number (replay),
then each new one (live), in order, with no gap and no duplicate, ending after the final one.

* ``RedisAnswers``: shared by every worker and replica. An answer is a hash and a Redis
  Stream whose entry ids are ``0-<event number>`` (the id is the event id), read through the
  core's follower (one ``XREAD`` a process). Keys expire ``retention`` s after the end, and
  ``max_age + retention`` s after the start whatever happens (a writer that died). A reader
  somewhere keeps a short-lived key alive, so the writer (on any worker) knows someone reads;
  a stop asked anywhere is published to the writer's process.
* ``MemoryAnswers``: embedded mode (no Redis): the same, within one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from sluice.memory_log import MemoryLog
from sluice.stream_follower import Fields, StreamFollower

log = logging.getLogger("chat_proxy.answers")

Event = tuple[int, bytes, bool]  # (number, SSE event, final)


@dataclass(slots=True)
class AnswerInfo:
    owner: str
    created: float
    last: int  # the number of its last event so far (0: none yet)
    ended: bool


class AnswerStore(Protocol):
    async def create(self, answer_id: str, owner: str) -> None: ...

    async def append(self, answer_id: str, events: list[Event]) -> None:
        """Record events (numbers in order, the next ones); the last may be final."""
        ...

    async def info(self, answer_id: str) -> AnswerInfo | None: ...

    def events(self, answer_id: str, after: int) -> AsyncGenerator[tuple[int, bytes], None]:
        """Every event after number ``after``, then each new one, up to the final one."""
        ...

    async def reading(self, answer_ids: list[str]) -> None:
        """These answers have a reader in this process now (for ``read_lately``)."""
        ...

    async def look(self, answer_id: str) -> tuple[bool, bool]:
        """(whether some process said it reads the answer within the last ``hold`` s,
        whether a stop was asked): the writer's look, once a second."""
        ...

    async def ask_stop(self, answer_id: str) -> None:
        """Tell the answer's writer, wherever it runs, to stop: at once (``on_stop``
        there), and at its next look should that message be missed."""
        ...

    async def serve(self, on_stop: Callable[[str], None]) -> None:
        """Until cancelled: call ``on_stop(answer_id)`` for each stop asked anywhere."""
        ...

    async def close(self) -> None: ...


def _decode(entry_id: str, fields: Fields) -> Event:
    return int(entry_id.partition("-")[2]), fields[b"f"], b"end" in fields


def _final(event: Event) -> bool:
    return event[2]


class RedisAnswers:
    def __init__(
        self, redis: Redis, prefix: str, retention: int, max_age: float, hold: float
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.retention = retention
        self.max_age = max_age
        self.hold = hold  # how long a reader's "reading" mark lasts
        self.follower = StreamFollower(redis, _decode)

    def meta_key(self, answer_id: str) -> str:
        return f"{self.prefix}:{answer_id}"

    def events_key(self, answer_id: str) -> str:
        return f"{self.prefix}:{answer_id}:events"

    def reader_key(self, answer_id: str) -> str:
        return f"{self.prefix}:{answer_id}:read"

    @property
    def stop_channel(self) -> str:
        return f"{self.prefix}:stop"

    def _lifetime(self) -> int:
        return int(self.max_age + self.retention) + 1

    async def create(self, answer_id: str, owner: str) -> None:
        key = self.meta_key(answer_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"owner": owner, "created": repr(time.time())})
            pipe.expire(key, self._lifetime())
            pipe.set(self.reader_key(answer_id), b"1", px=max(1, int(self.hold * 1000)))
            await pipe.execute()

    async def append(self, answer_id: str, events: list[Event]) -> None:
        """The usual write, one event in the middle of an answer, is one ``XADD``; the first
        batch also gives the stream its lifetime, and the last one (atomically) marks the
        answer ended and starts its retention. The last event number is the stream's last
        entry id, so a retried write can tell what it already wrote."""
        if not events:
            return
        stream, meta = self.events_key(answer_id), self.meta_key(answer_id)
        first, final = events[0][0] == 1, events[-1][2]
        if len(events) == 1 and not first and not final:
            number, frame, _ = events[0]
            await self.redis.xadd(stream, {"f": frame}, id=f"0-{number}")
            return
        async with self.redis.pipeline(transaction=True) as pipe:  # no hole, no lost TTL
            for number, frame, end in events:
                fields: dict[str, bytes] = {"f": frame}
                if end:
                    fields["end"] = b"1"
                pipe.xadd(stream, fields, id=f"0-{number}")  # type: ignore[arg-type]
            if final:
                pipe.hset(meta, "ended", "1")
                pipe.expire(meta, self.retention)
                pipe.expire(stream, self.retention)
            elif first:  # the stream key exists from its first event on
                pipe.expire(stream, self._lifetime())
            await pipe.execute()

    async def info(self, answer_id: str) -> AnswerInfo | None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.meta_key(answer_id))
            pipe.xrevrange(self.events_key(answer_id), count=1)
            stored, newest = await pipe.execute()
        if not stored or b"owner" not in stored:
            return None
        return AnswerInfo(
            owner=stored[b"owner"].decode(),
            created=float(stored[b"created"]),
            last=int(newest[0][0].decode().partition("-")[2]) if newest else 0,
            ended=stored.get(b"ended") == b"1",
        )

    async def events(self, answer_id: str, after: int) -> AsyncGenerator[tuple[int, bytes], None]:
        entries = self.follower.entries(self.events_key(answer_id), f"0-{after}", _final)
        try:
            async for _, (number, frame, _end) in entries:
                yield number, frame
        finally:
            await entries.aclose()

    async def reading(self, answer_ids: list[str]) -> None:
        if not answer_ids:
            return
        hold = max(1, int(self.hold * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            for answer_id in answer_ids:
                pipe.set(self.reader_key(answer_id), b"1", px=hold)
            await pipe.execute()

    def stop_key(self, answer_id: str) -> str:
        return f"{self.prefix}:{answer_id}:stop"

    async def look(self, answer_id: str) -> tuple[bool, bool]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.reader_key(answer_id))
            pipe.exists(self.stop_key(answer_id))
            reading, stop = await pipe.execute()
        return bool(reading), bool(stop)

    async def ask_stop(self, answer_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.stop_key(answer_id), b"1", ex=self._lifetime())
            pipe.publish(self.stop_channel, answer_id.encode())
            await pipe.execute()

    async def serve(self, on_stop: Callable[[str], None]) -> None:
        failing = False
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.stop_channel)
                if failing:
                    log.info("stop channel listening again")
                failing = False
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        on_stop(bytes(message["data"]).decode(errors="replace"))
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.warning("stop channel failed; retrying", exc_info=True)
                failing = True
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self.follower.close()


@dataclass(slots=True)
class _Kept:
    owner: str
    created: float
    ended: bool = False
    read_at: float = field(default_factory=time.monotonic)


class MemoryAnswers:
    """Embedded mode: this worker's answers, at most ``max_answers`` (the oldest ended go
    first), each deleted ``retention`` s after its end (or ``max_age + retention`` after its
    start)."""

    def __init__(
        self, retention: int, max_age: float, hold: float, max_answers: int = 10_000
    ) -> None:
        self.retention = retention
        self.max_age = max_age
        self.hold = hold  # how long a reader's "reading" mark lasts
        self.max_answers = max_answers
        self._answers: OrderedDict[str, _Kept] = OrderedDict()
        self._events: MemoryLog[bytes] = MemoryLog()  # the core's, by answer id
        self._on_stop: Callable[[str], None] | None = None

    def _delete(self, answer_id: str) -> None:
        self._answers.pop(answer_id, None)
        self._events.drop(answer_id)

    def _expire(self) -> None:
        now = time.time()
        for answer_id, kept in list(self._answers.items()):
            if now - kept.created > self.max_age + self.retention:
                self._delete(answer_id)
        while len(self._answers) > self.max_answers:
            oldest = next((i for i, k in self._answers.items() if k.ended), None)
            if oldest is None:
                break
            self._delete(oldest)

    async def create(self, answer_id: str, owner: str) -> None:
        self._expire()
        self._answers[answer_id] = _Kept(owner, time.time())
        self._events.open(answer_id)

    async def append(self, answer_id: str, events: list[Event]) -> None:
        kept = self._answers.get(answer_id)
        if kept is None or not events:
            return
        for _, frame, final in events:  # (numbered in order: the log's own numbers)
            self._events.append(answer_id, frame, final)
        if events[-1][2]:
            kept.ended = True
            asyncio.get_running_loop().call_later(self.retention, self._delete, answer_id)

    async def info(self, answer_id: str) -> AnswerInfo | None:
        kept = self._answers.get(answer_id)
        if kept is None:
            return None
        return AnswerInfo(kept.owner, kept.created, self._events.last(answer_id), kept.ended)

    async def events(self, answer_id: str, after: int) -> AsyncGenerator[tuple[int, bytes], None]:
        async for number, frame in self._events.read(answer_id, after):
            yield number, frame

    async def reading(self, answer_ids: list[str]) -> None:
        now = time.monotonic()
        for answer_id in answer_ids:
            kept = self._answers.get(answer_id)
            if kept is not None:
                kept.read_at = now

    async def look(self, answer_id: str) -> tuple[bool, bool]:
        kept = self._answers.get(answer_id)
        return kept is not None and time.monotonic() - kept.read_at < self.hold, False

    async def ask_stop(self, answer_id: str) -> None:
        if self._on_stop is not None:
            self._on_stop(answer_id)

    async def serve(self, on_stop: Callable[[str], None]) -> None:
        self._on_stop = on_stop
        try:
            await asyncio.Event().wait()
        finally:
            self._on_stop = None

    async def close(self) -> None:
        for answer_id in list(self._answers):
            self._delete(answer_id)
