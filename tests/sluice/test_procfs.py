"""/proc readers: real processes (this one, its children, a zombie, one with a hostile name)
and a made-up /proc for what a real one rarely shows (no children list, torn or vanished
entries)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice import procfs


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_children_are_live_children_only(sleepers: list[subprocess.Popen[bytes]]) -> None:
    a, b = sleepers
    mine = procfs.children(os.getpid())
    assert a.pid in mine and b.pid in mine and mine == sorted(mine)
    a.kill()
    a.wait()
    assert a.pid not in procfs.children(os.getpid())
    assert b.pid in procfs.children(os.getpid())
    exited = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while exited.pid in procfs.children(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.01)  # a zombie until reaped: not a live child any more
    assert exited.pid not in procfs.children(os.getpid())
    state = procfs.stat(exited.pid)
    assert state is not None and state.state == "Z"
    exited.wait()
    assert procfs.stat(exited.pid) is None  # reaped: gone


def test_stat_of_this_process() -> None:
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass  # CPU time for the kernel to have counted
    mine = procfs.stat(os.getpid())
    times = os.times()
    assert mine is not None
    assert mine.pid == os.getpid() and mine.ppid == os.getppid()
    assert mine.state == "R"  # reading its own stat: running
    assert mine.comm == Path(f"/proc/{os.getpid()}/comm").read_text().rstrip("\n")
    assert abs(mine.cpu_seconds - (times.user + times.system)) < 0.1
    assert mine.cpu_seconds >= 0.2


def test_a_command_name_with_parentheses_and_spaces_is_read_whole() -> None:
    # The name is the process's to choose: a naive split of stat on spaces or the first ")"
    # takes this one's words for its state and parent.
    name = "x) Z 1 (y"
    script = (
        f"import sys; open('/proc/self/comm', 'w').write({name!r}); print('ready', flush=True);"
        " sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        found = procfs.stat(child.pid)
        assert found is not None
        assert found.comm == name and found.ppid == os.getpid() and found.state in ("R", "S")
        me = procfs.stat(os.getpid())
        assert me is not None and found.start_time >= me.start_time > 0  # started after me
        assert child.pid in procfs.children(os.getpid())
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def test_rss_of_this_process_and_of_none() -> None:
    rss = procfs.rss_bytes(os.getpid())
    assert rss is not None and 10 * 2**20 < rss < 16 * 2**30
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert procfs.rss_bytes(gone.pid) is None


def _stat(pid: int, comm: str, state: str, ppid: int, utime: int = 0, stime: int = 0) -> str:
    rest = [0] * 49
    rest[9], rest[10], rest[17] = utime, stime, 12345  # fields 14, 15 and 22 of stat
    return f"{pid} ({comm}) {state} {ppid} " + " ".join(map(str, rest)) + "\n"


@pytest.fixture
def fake_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    entries = {
        10: _stat(10, "master", "S", 1),
        11: _stat(11, "a) (b", "S", 10, utime=150, stime=50),
        12: _stat(12, "zombie", "Z", 10),
        13: _stat(13, "other", "S", 99),
        15: "15 (torn",  # read as it was being written, or a kernel that says less
        16: _stat(16, "bad", "S", 10).replace(" 10 ", " ten ", 1),
    }
    for pid, text in entries.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(text)
    (tmp_path / "14").mkdir()  # gone between listing and reading
    (tmp_path / "net").mkdir()
    monkeypatch.setattr(procfs, "PROC", tmp_path)
    return tmp_path


def test_children_by_a_scan_where_the_kernel_keeps_no_list(fake_proc: Path) -> None:
    assert procfs.pids() == [10, 11, 12, 13, 14, 15, 16]
    assert procfs.children(10) == [11]
    assert procfs.children(99) == [13]
    assert procfs.children(11) == []


def test_children_from_the_kernels_list_are_still_checked(fake_proc: Path) -> None:
    listed = fake_proc / "10" / "task" / "10"
    listed.mkdir(parents=True)
    (listed / "children").write_text("12 11 14 13 ")  # 13 since reparented, 14 gone
    assert procfs.children(10) == [11]


def test_stat_fields_and_unreadable_entries(fake_proc: Path) -> None:
    child = procfs.stat(11)
    assert child is not None
    assert (child.comm, child.state, child.ppid) == ("a) (b", "S", 10)
    assert (child.utime, child.stime, child.start_time) == (150, 50, 12345)
    assert child.cpu_seconds == pytest.approx(200 / procfs.CLOCK_TICKS)
    assert [procfs.stat(pid) for pid in (14, 15, 16, 17)] == [None] * 4
