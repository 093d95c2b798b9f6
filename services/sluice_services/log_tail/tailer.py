"""One reader per file, followed by name the way ``tail -F`` does, fanned out to followers.

Each wake (an inotify event from watchfiles, or the poll interval) the reader compares
the path with its open file: a different inode means rotation by rename (finish the old
file, then read the new one from 0), a missing path means deletion (finish, then wait for
it to come back), a smaller size means copytruncate (start again from 0 and say so).
Partial lines wait for their newline (or the line length cap); bytes are decoded with
replacement, so binary garbage never breaks a stream.

A line's position is ``(inode, offset of its end)``: the id a follower resumes from.

Every look at the path goes through ``files``' no-symlink walk, and bytes are only ever read
from the descriptor that walk opened and validated. When a check fails (a symlink anywhere in
the path, a FIFO or device, a hard link, another device), the file is *refused*: its
descriptor is closed, its history (ring, partial line, position, what followers have queued)
is dropped, followers get a ``refused`` notice with the reason, and nothing of it is served
again; when a valid file is back at the path it is followed again from offset 0
(``created``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import awatch

from sluice.events import Event
from sluice.formats import StreamFormat, encode
from sluice_services.log_tail.files import (
    Refused,
    check_path,
    folder_identity,
    open_checked,
    open_folder,
)
from sluice_services.log_tail.metrics import FOLLOWERS, GAPS, LINES_READ, REFUSALS, ROTATIONS

log = logging.getLogger("log_tail")

READ_SIZE = 1 << 20


@dataclass(slots=True)
class Line:
    ino: int
    start: int  # offset of the line's first byte
    end: int  # offset just past its newline
    text: str
    _framed: dict[StreamFormat, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.ino}:{self.end}"

    def framed(self, fmt: StreamFormat) -> bytes:
        """This line on the wire in ``fmt``, built once however many follow it."""
        found = self._framed.get(fmt)
        if found is None:
            event = Event(data=self.text, id=self.id, text=self.text + "\n")
            found = self._framed[fmt] = encode(event, fmt)
        return found


@dataclass(frozen=True, slots=True)
class Notice:
    """Something about the file, not a line of it: rotated, truncated, gap, …"""

    kind: str
    data: dict[str, object]


Item = Line | Notice


@dataclass(eq=False)
class Follower:
    queue: asyncio.Queue[Item]
    capacity: int
    missed: int = 0
    lines_since_start: list[Item] = field(default_factory=list)


class Tailer:
    def __init__(
        self, name: str, path: Path, service: str, ring: int, max_line: int, poll: float
    ) -> None:
        self.name = name
        self.path = path
        self.service = service
        self.max_line = max_line
        self.poll = poll
        self.ring: deque[Line] = deque(maxlen=ring)
        self.followers: set[Follower] = set()
        self.fd: int | None = None
        self.dev = 0
        self.ino = 0
        self.refused: str | None = None  # why the path is not read now, if it is not
        self.offset = 0  # next byte to read
        self.partial = b""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._gauge = FOLLOWERS.labels(service, name)
        self._read_counter = LINES_READ.labels(service, name)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._open_initial()
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._watch())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    async def _watch(self) -> None:
        """inotify (through watchfiles) on the file's folder: wake the reader at once.

        A wake only makes ``_sync`` run its checks sooner; it never reads by itself."""
        while True:
            try:
                await self._watch_folder()
            except Exception as exc:  # no folder yet, inotify limits: polling still runs
                log.debug("watching %s failed (%s); polling", self.path.parent, exc)
            await asyncio.sleep(self.poll)

    async def _watch_folder(self) -> None:
        """Watch the folder the no-symlink walk reaches, through its descriptor
        (``/proc/self/fd/N``), so a folder swapped for a symlink is never what is watched;
        once the walk reaches another folder, or none, return (and watch again)."""
        try:
            folder = open_folder(self.path)
        except Refused:
            return
        if folder is None:
            return
        try:
            info = os.fstat(folder)
            identity = (info.st_dev, info.st_ino)
            watched = f"/proc/self/fd/{folder}"
            wanted = {watched, f"{watched}/{self.path.name}"}
            changes = awatch(
                watched,
                watch_filter=lambda _, p: p in wanted,
                debounce=50,
                step=5,
                recursive=False,
                rust_timeout=max(50, int(self.poll * 1000)),
                yield_on_timeout=True,
            )
            async with contextlib.aclosing(changes):
                async for batch in changes:
                    if batch:
                        self._wake.set()
                    if folder_identity(self.path) != identity:
                        self._wake.set()
                        return
        finally:
            os.close(folder)

    async def _run(self) -> None:
        while True:
            try:
                await self._sync()
            except Exception:
                log.exception("tailing %s failed; retrying", self.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()

    # -- reading ----------------------------------------------------------------------
    def _open_initial(self) -> None:
        """At startup: open the file if it is there and keep its last lines."""
        try:
            opened = open_checked(self.path)
        except Refused as refused:
            self._refuse(refused)
            return
        if opened is None:
            return
        self.fd, info = opened
        self.dev, self.ino = info.st_dev, info.st_ino
        start = max(0, info.st_size - self.ring.maxlen * 256) if self.ring.maxlen else 0
        self.offset = start
        if start:  # begin at a line boundary
            head = os.pread(self.fd, 64 * 1024, start)
            cut = head.find(b"\n")
            self.offset = start + cut + 1 if cut >= 0 else start
        self._read_available(broadcast=False)

    async def _sync(self) -> None:
        try:
            current = check_path(self.path)
        except Refused as refused:
            self._refuse(refused)
            return
        if self.fd is None:
            if current is not None:
                self._open_new(kind="create")
            else:
                self.refused = None  # gone: a file that comes back is "created"
            return
        if current is None or (current.st_dev, current.st_ino) != (self.dev, self.ino):
            self._read_available()
            self._flush_partial()
            os.close(self.fd)
            self.fd = None
            kind = "rename" if current is not None else "delete"
            ROTATIONS.labels(self.service, self.name, kind).inc()
            self._broadcast(Notice("rotated" if current else "deleted", {"file": self.name}))
            if current is not None:
                self._open_new(kind=None)
            return
        if current.st_size < self.offset:
            ROTATIONS.labels(self.service, self.name, "truncate").inc()
            self.offset = 0
            self.partial = b""
            self._broadcast(Notice("truncated", {"file": self.name}))
        self._read_available()
        await asyncio.sleep(0)

    def _open_new(self, kind: str | None) -> None:
        try:
            opened = open_checked(self.path)
        except Refused as refused:
            self._refuse(refused)
            return
        if opened is None:
            return
        self.fd, info = opened
        self.dev, self.ino = info.st_dev, info.st_ino
        self.offset = 0
        self.partial = b""
        self.refused = None
        if kind is not None:
            ROTATIONS.labels(self.service, self.name, kind).inc()
            self._broadcast(Notice("created", {"file": self.name}))
        self._read_available()

    def _refuse(self, refused: Refused) -> None:
        """The path may not be read: forget the file, tell followers why, once per reason."""
        if self.fd is None and self.refused == refused.reason:
            return
        log.warning("log file %s refused (%s)", self.name, refused)
        REFUSALS.labels(self.service, self.name, refused.reason).inc()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.dev = self.ino = self.offset = 0
        self.partial = b""
        self.ring.clear()
        self.refused = refused.reason
        notice = self.refusal()
        assert notice is not None
        for follower in self.followers:  # what they had queued is that history too
            while not follower.queue.empty():
                follower.queue.get_nowait()
            follower.missed = 0
            follower.queue.put_nowait(notice)

    def refusal(self) -> Notice | None:
        """The ``refused`` notice while the path is refused, for followers arriving then."""
        if self.refused is None:
            return None
        return Notice("refused", {"file": self.name, "reason": self.refused})

    def _read_available(self, broadcast: bool = True) -> None:
        assert self.fd is not None
        while True:
            data = os.pread(self.fd, READ_SIZE, self.offset)
            if not data:
                return
            base = self.offset - len(self.partial)
            self.offset += len(data)
            lines, self.partial = self.split(self.partial + data, base)
            for line in lines:
                self.ring.append(line)
                if broadcast:
                    self._broadcast(line)
            self._read_counter.inc(len(lines))

    def split(self, buffer: bytes, base: int) -> tuple[list[Line], bytes]:
        """Complete lines of ``buffer`` (starting at file offset ``base``), and the rest."""
        lines = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                rest = buffer[start:]
                while len(rest) > self.max_line:  # an endless line is cut, not held forever
                    cut = base + start + self.max_line
                    lines.append(self._line(rest[: self.max_line], base + start, cut))
                    start += self.max_line
                    rest = rest[self.max_line :]
                return lines, rest
            while end - start > self.max_line:  # a long line comes in pieces, none lost
                lines.append(
                    self._line(
                        buffer[start : start + self.max_line],
                        base + start,
                        base + start + self.max_line,
                    )
                )
                start += self.max_line
            lines.append(self._line(buffer[start:end], base + start, base + end + 1))
            start = end + 1

    def _line(self, raw: bytes, start: int, end: int) -> Line:
        return Line(self.ino, start, end, raw.rstrip(b"\r").decode("utf-8", "replace"))

    def _flush_partial(self) -> None:
        if self.partial:  # the old file's last line never got its newline
            line = self._line(self.partial, self.offset - len(self.partial), self.offset)
            self.partial = b""
            self.ring.append(line)
            self._broadcast(line)

    # -- followers --------------------------------------------------------------------
    def _broadcast(self, item: Item) -> None:
        for follower in self.followers:
            queue = follower.queue
            if follower.missed:
                if queue.qsize() <= follower.capacity - 2:
                    queue.put_nowait(
                        Notice("gap", {"missed": follower.missed, "reason": "slow_follower"})
                    )
                    GAPS.labels(self.service, self.name, "slow_follower").inc()
                    follower.missed = 0
                else:
                    follower.missed += 1
                    continue
            if queue.qsize() < follower.capacity:
                queue.put_nowait(item)
            else:
                follower.missed += 1

    def follow(self, capacity: int) -> Follower:
        follower = Follower(asyncio.Queue(), capacity)
        self.followers.add(follower)
        self._gauge.inc()
        return follower

    def unfollow(self, follower: Follower) -> None:
        if follower in self.followers:
            self.followers.discard(follower)
            self._gauge.dec()

    def backlog(self, lines: int) -> list[Line]:
        return list(self.ring)[-lines:] if lines else []

    def since(self, ino: int, end: int, max_bytes: int) -> tuple[list[Item], bool]:
        """Lines after position ``(ino, end)``, from the ring or the file; False if lost."""
        if ino != self.ino or self.fd is None or end > self.offset:
            return [], False
        ring = [line for line in self.ring if line.ino == ino]
        if ring and ring[0].start <= end:
            return [line for line in ring if line.end > end], True
        stop = self.offset - len(self.partial)
        if stop - end > max_bytes:
            return [], False
        lines, _ = self.split(os.pread(self.fd, stop - end, end), end)
        return list(lines), True


TailerFactory = Callable[[str, Path], Tailer]
