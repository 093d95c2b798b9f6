"""The tailer against real files: tail -F semantics, fan-out, resume."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sluice_services.log_tail.files import ConfigError, Refused, open_checked, parse_files
from sluice_services.log_tail.metrics import LINES_READ
from sluice_services.log_tail.tailer import Follower, Line, Notice, Tailer

pytestmark = pytest.mark.anyio


def tailer(path: Path, ring: int = 100, max_line: int = 1000) -> Tailer:
    return Tailer(f"t{abs(hash(path)) % 10**8}", path, "test", ring, max_line, poll=0.05)


async def take(follower: Follower, count: int, timeout: float = 3.0) -> list[object]:
    items: list[object] = []
    async with asyncio.timeout(timeout):
        while len(items) < count:
            item = await follower.queue.get()
            items.append(item.text if isinstance(item, Line) else item.kind)
    return items


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


async def test_backlog_then_new_lines_and_partial_lines_wait(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    t = tailer(log)
    t.start()
    try:
        assert [line.text for line in t.backlog(2)] == ["two", "three"]
        follower = t.follow(100)
        append(log, b"four\nfi")
        assert await take(follower, 1) == ["four"]
        await asyncio.sleep(0.2)
        assert follower.queue.empty()  # "fi" waits for its newline
        append(log, b"ve\n")
        assert await take(follower, 1) == ["five"]
    finally:
        await t.stop()


async def test_binary_garbage_and_endless_lines(tmp_path: Path) -> None:
    log = tmp_path / "bin.log"
    log.write_bytes(b"")
    t = tailer(log, max_line=20)
    t.start()
    try:
        follower = t.follow(100)
        append(log, b"ok \xff\xfe\x00 bytes\n" + b"x" * 45 + b"\n" + b"y" * 25)
        got = await take(follower, 5)
        assert got[0] == "ok \ufffd\ufffd\x00 bytes"
        assert got[1:] == ["x" * 20, "x" * 20, "x" * 5, "y" * 20]  # no newline yet: 20 out
        assert t.partial == b"y" * 5
    finally:
        await t.stop()


async def test_rotation_by_rename_finishes_the_old_file_then_follows_the_new(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    t = tailer(log)
    t.start()
    try:
        follower = t.follow(100)
        with log.open("ab") as old:
            log.rename(tmp_path / "app.log.1")
            old.write(b"last words of the old file\n")  # written after the rename
            old.flush()
            log.write_bytes(b"first of the new file\n")
        assert await take(follower, 3) == [
            "last words of the old file",
            "rotated",
            "first of the new file",
        ]
    finally:
        await t.stop()


async def test_copytruncate_restarts_from_zero_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\ntwo\n")
    t = tailer(log)
    t.start()
    try:
        follower = t.follow(100)
        with log.open("r+b") as handle:
            handle.truncate(0)
        await asyncio.sleep(0.2)
        append(log, b"after\n")
        assert await take(follower, 2) == ["truncated", "after"]
    finally:
        await t.stop()


async def test_late_creation_and_deletion_then_recreation(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    t = tailer(log)
    t.start()
    try:
        follower = t.follow(100)
        await asyncio.sleep(0.1)
        log.write_bytes(b"born\n")
        assert await take(follower, 2) == ["created", "born"]
        log.unlink()
        await asyncio.sleep(0.2)
        log.write_bytes(b"again\n")
        assert await take(follower, 3) == ["deleted", "created", "again"]
    finally:
        await t.stop()


async def test_a_slow_follower_gets_a_gap_and_never_delays_the_others(tmp_path: Path) -> None:
    log = tmp_path / "busy.log"
    log.write_bytes(b"")
    t = tailer(log)
    t.start()
    try:
        slow = t.follow(10)  # never read until the end
        fast = t.follow(1000)
        append(log, b"".join(f"line {i}\n".encode() for i in range(100)))
        got = await take(fast, 100)
        assert got == [f"line {i}" for i in range(100)]
        assert slow.queue.qsize() == 10
        append(log, b"more\n")
        await asyncio.sleep(0.2)
        drained = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        append(log, b"after the gap\n")
        tail = await take(slow, 2)
    finally:
        await t.stop()
    assert [x.text for x in drained if isinstance(x, Line)] == [f"line {i}" for i in range(10)]
    assert tail[0] == "gap"
    assert tail[1] == "after the gap"


async def test_fifty_followers_share_one_reader(tmp_path: Path) -> None:
    log = tmp_path / "shared.log"
    log.write_bytes(b"")
    t = tailer(log)
    read_before = LINES_READ.labels("test", t.name)._value.get()
    t.start()
    try:
        followers = [t.follow(1000) for _ in range(50)]
        append(log, b"".join(f"{i}\n".encode() for i in range(200)))
        results = await asyncio.gather(*(take(f, 200) for f in followers))
        more = [t.follow(1000) for _ in range(50)]
        assert len(t.followers) == 100
        assert open_descriptors(log) == 1  # one reader for a hundred followers
        del more
    finally:
        await t.stop()
    assert all(r == [str(i) for i in range(200)] for r in results)
    read = LINES_READ.labels("test", t.name)._value.get() - read_before
    assert read == 200  # read once, not 50 times


def open_descriptors(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


async def test_since_resumes_exactly_and_knows_when_it_cannot(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_bytes(b"".join(f"{i}\n".encode() for i in range(50)))
    t = tailer(log, ring=5)  # most of the file is only on disk
    t.start()
    try:
        line_ten_end = sum(len(f"{i}\n") for i in range(11))
        items, ok = t.since(t.ino, line_ten_end, 1 << 20)
        assert ok
        assert [x.text for x in items if isinstance(x, Line)] == [str(i) for i in range(11, 50)]
        assert t.since(t.ino + 1, 0, 1 << 20) == ([], False)  # another file: rotated past
        assert t.since(t.ino, 10**9, 1 << 20) == ([], False)  # beyond the end
        assert t.since(t.ino, 0, 10) == ([], False)  # too far back to read
    finally:
        await t.stop()


async def test_a_path_replaced_by_a_symlink_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:hash\n")
    log = tmp_path / "app.log"
    log.write_bytes(b"ok\n")
    t = tailer(log)
    t.start()
    try:
        follower = t.follow(100)
        log.unlink()
        log.symlink_to(secret)
        await asyncio.sleep(0.3)
        items = [follower.queue.get_nowait() for _ in range(follower.queue.qsize())]
    finally:
        await t.stop()
    assert [i.kind for i in items if isinstance(i, Notice)] == ["refused"]
    assert not any(isinstance(i, Line) for i in items)
    with pytest.raises(Refused, match="symlink"):
        open_checked(log)


def test_config_parsing_and_refusals(tmp_path: Path) -> None:
    files = parse_files(f"app={tmp_path}/a.log, web = {tmp_path}/../{tmp_path.name}/w.log", None)
    assert files == {"app": tmp_path / "a.log", "web": tmp_path / "w.log"}
    listed = tmp_path / "files"
    listed.write_text(f"# comment\nx={tmp_path}/x.log\n")
    assert parse_files("", listed) == {"x": tmp_path / "x.log"}
    for bad in ("noequals", "a=relative/path", "../up=/tmp/x", "a=/x,a=/y", "a b=/x", "=/x"):
        with pytest.raises(ConfigError):
            parse_files(bad, None)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for not_a_file in (fifo, tmp_path):
        with pytest.raises(Refused) as refused:
            open_checked(not_a_file)
        assert refused.value.reason == "not_regular"
