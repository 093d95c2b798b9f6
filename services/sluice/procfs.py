"""What Linux's ``/proc`` says about a process: its parent, state, CPU time, memory, children.

Every reader answers ``None`` (or leaves the process out) for a process that is gone or
unreadable, as one may vanish between listing it and reading it. ``/proc/PID/stat`` is
parsed from its last ``)``: the command name before it is the process's own to choose and
may hold spaces and parentheses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of the CPU and start times in stat


@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of ``/proc/PID/stat`` that are used here (``man 5 proc``)."""

    pid: int
    comm: str  # the command name, at most 15 characters
    state: str  # R running, S sleeping, ..., Z zombie
    ppid: int
    utime: int  # CPU time in user mode, in clock ticks
    stime: int  # CPU time in kernel mode, in clock ticks
    start_time: int  # when it started, in clock ticks after boot

    @property
    def cpu_seconds(self) -> float:
        return (self.utime + self.stime) / CLOCK_TICKS


def stat(pid: int) -> Stat | None:
    """``/proc/PID/stat``, or None when there is no such (readable, well-formed) process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    head, paren, tail = text.rpartition(")")
    _, _, comm = head.partition("(")
    fields = tail.split()
    if not paren or len(fields) < 20:
        return None
    try:
        return Stat(
            pid=pid,
            comm=comm,
            state=fields[0],
            ppid=int(fields[1]),
            utime=int(fields[11]),
            stime=int(fields[12]),
            start_time=int(fields[19]),
        )
    except ValueError:
        return None


def pids() -> list[int]:
    """Every process's pid."""
    return sorted(int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit())


def children(parent: int) -> list[int]:
    """Live (not zombie) child pids of ``parent``: the kernel's own list where it keeps one
    (CONFIG_PROC_CHILDREN), else a scan of every process."""
    try:
        listed = (PROC / str(parent) / "task" / str(parent) / "children").read_text().split()
    except OSError:
        candidates = pids()
    else:
        candidates = [int(pid) for pid in listed]
    found = []
    for pid in candidates:
        info = stat(pid)
        if info is not None and info.ppid == parent and info.state != "Z":
            found.append(pid)
    return sorted(found)


def rss_bytes(pid: int) -> int | None:
    """Resident memory (``VmRSS`` of ``/proc/PID/status``); None when gone, or a kernel
    thread (which has none)."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None
