"""Readers of Redis Streams, many per process, served by one ``XREAD`` for them all.

A reader of a stream gets every entry after a position (the replay, read in pages with
``XRANGE``), then each new entry as it is added (live), in order, with no gap and no
duplicate, and stops after the entry its ``final`` test says ends the stream. The live part
is fanned out: one task per process follows every stream that has readers, in one blocking
``XREAD``, and puts each entry into each reader's queue. A reader is attached before its
replay, so nothing added between the two is missed; what the replay already gave is skipped.

Each entry is decoded once for every live reader of the process (``decode``), not once a
reader. A reader that falls behind by ``queue_size`` entries is told so (:class:`FellBehind`): it
resumes from its last position, like any reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Generic, TypeVar

from redis.asyncio import Redis

log = logging.getLogger("sluice.stream_follower")

Fields = dict[bytes, bytes]
T = TypeVar("T")

_PAGE = 500


class FellBehind(RuntimeError):
    """A reader's queue overflowed: it must resume from its last position."""


def id_key(entry_id: str) -> tuple[int, int]:
    """An entry id (``ms-seq``) as a key that sorts as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


class StreamFollower(Generic[T]):
    """Every reader of this process, of any stream, and the one task that reads for them.
    ``decode(entry_id, fields)`` makes an entry what readers get."""

    def __init__(
        self,
        redis: Redis,
        decode: Callable[[str, Fields], T],
        queue_size: int = 10_000,
        block_ms: int = 250,
    ) -> None:
        self.redis = redis
        self.decode = decode
        self.queue_size = queue_size
        self.block_ms = block_ms  # short: streams followed since are picked up quickly
        self._queues: dict[str, set[asyncio.Queue[tuple[str, T] | None]]] = {}
        self._positions: dict[str, str] = {}
        self._reader: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._attaching = asyncio.Lock()
        self._readers = 0
        self._closing = False

    @property
    def readers(self) -> int:
        """Readers open now, of every stream."""
        return self._readers

    def followed(self, key: str) -> int:
        """Readers of ``key`` in this process."""
        return len(self._queues.get(key, ()))

    async def entries(
        self, key: str, after: str, final: Callable[[T], bool]
    ) -> AsyncGenerator[tuple[str, T], None]:
        """Every entry of stream ``key`` after id ``after`` (``0-0``: from the start), then
        each new one, up to and including the first that ``final`` says ends it: each as
        ``(its id, decoded)``."""
        queue: asyncio.Queue[tuple[str, T] | None] = asyncio.Queue(maxsize=self.queue_size)
        await self._attach(key, queue)  # before the replay: nothing falls in between
        self._readers += 1
        try:
            last = after
            while True:  # replay, in pages
                page = await self.redis.xrange(key, min=f"({last}", count=_PAGE)
                for raw_id, fields in page:
                    last = raw_id.decode()
                    value = self.decode(last, fields)
                    yield last, value
                    if final(value):
                        return
                if len(page) < _PAGE:
                    break
            while True:  # live, skipping what the replay already gave
                item = await queue.get()
                if item is None:
                    raise FellBehind("reader fell behind; reconnect to resume")
                position, value = item
                if id_key(position) <= id_key(last):
                    continue
                last = position
                yield position, value
                if final(value):
                    return
        finally:
            self._readers -= 1
            self._detach(key, queue)

    async def _attach(self, key: str, queue: asyncio.Queue[tuple[str, T] | None]) -> None:
        # Serialised: two first readers of one stream must not both create its queue set
        # (the second would drop the first's queue, which then never hears a live entry).
        async with self._attaching:
            if key not in self._queues:
                newest = await self.redis.xrevrange(key, count=1)
                self._positions[key] = newest[0][0].decode() if newest else "0-0"
                self._queues[key] = set()
            self._queues[key].add(queue)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        self._wake.set()

    def _detach(self, key: str, queue: asyncio.Queue[tuple[str, T] | None]) -> None:
        queues = self._queues.get(key)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._queues[key]
                self._positions.pop(key, None)

    async def _read(self) -> None:
        """The one reader of this process: every followed stream in one blocking XREAD."""
        failing = False
        while not self._closing:
            if not self._queues:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams = dict(self._positions)
            try:
                replies = await self.redis.xread(streams, block=self.block_ms, count=1000)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:  # once per outage, not twice a second
                    log.warning("stream reader failed; retrying", exc_info=True)
                failing = True
                await asyncio.sleep(0.5)
                continue
            if failing:
                log.info("stream reader reading again")
                failing = False
            for raw_key, entries in replies or ():
                key = raw_key.decode()
                queues = self._queues.get(key)
                for raw_id, fields in entries:
                    position = raw_id.decode()
                    if key in self._positions:
                        self._positions[key] = position
                    if not queues:
                        continue
                    value = self.decode(position, fields)  # once, for every reader here
                    for queue in list(queues):
                        try:
                            queue.put_nowait((position, value))
                        except asyncio.QueueFull:  # a stuck reader: it resumes later
                            # Nothing more for it, and nothing it has not read yet either:
                            # were the oldest dropped for the marker, it would read on past
                            # a gap. It resumes from what it read last.
                            while not queue.empty():
                                queue.get_nowait()
                            queue.put_nowait(None)
                            if queues is not None:
                                queues.discard(queue)

    async def close(self) -> None:
        # A flag as well as the cancel: redis-py can swallow a cancel that lands as its
        # read ends, and the reader would then wait for readers forever.
        self._closing = True
        self._wake.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
