"""Rolling restarts: an old worker hands its traffic over only once its replacement serves.

On SIGHUP gunicorn forks new workers and sends SIGTERM to the old ones at once, before
the new ones have imported anything. An old worker that stopped serving right away
would leave a gap as long as a worker's boot (seconds on a busy machine) in which
nothing accepts connections. So each worker of a master says what it is doing in a
folder they share (``SLUICE_WORKER_STATE_DIR``, made by ``deploy/gunicorn.conf.py``):
one file a worker, named by its pid, holding ``ready`` (serving, staying) or ``leaving``
(told to stop). A child of the master with no file yet is booting. A worker told to
stop while siblings are booting is being replaced: it serves on until none is booting
any more (another SIGHUP may replace the replacements), then drains (see ``drain.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Literal

from sluice import procfs

State = Literal["booting", "ready", "leaving"]

POLL_SECONDS = 0.1  # a scan of /proc each, where the kernel keeps no list of children


class Siblings:
    """This worker and the other workers of its master, through their state files."""

    def __init__(self, folder: Path, me: int | None = None, parent: int | None = None) -> None:
        self.folder = folder
        self.me = os.getpid() if me is None else me
        self.parent = os.getppid() if parent is None else parent

    def mark(self, state: State) -> None:
        """Say what this worker is doing (atomically: a reader never sees half a word)."""
        path = self.folder / str(self.me)
        partial = path.with_suffix(".tmp")
        partial.write_text(state)
        os.replace(partial, path)

    def state(self, pid: int) -> State:
        try:
            text = (self.folder / str(pid)).read_text()
        except FileNotFoundError:
            return "booting"
        return "leaving" if text == "leaving" else "ready" if text == "ready" else "booting"

    def others(self) -> dict[int, State]:
        return {pid: self.state(pid) for pid in procfs.children(self.parent) if pid != self.me}

    def booting(self) -> set[int]:
        """Siblings that are starting: at a SIGTERM, the workers that replace this one."""
        return {pid for pid, state in self.others().items() if state == "booting"}

    async def wait_replaced(self, timeout: float) -> bool:
        """Wait until no sibling is booting, at most ``timeout`` seconds; True when a
        sibling then serves to take this worker's traffic."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.others().values()
            if "booting" not in states or time.monotonic() >= deadline:
                return "ready" in states
            await asyncio.sleep(POLL_SECONDS)

    def forget(self, pid: int) -> None:
        """A worker that exited says nothing more (the master calls this as it reaps it)."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / str(pid)).unlink()
