"""File swaps under a follower: each puts at a followed path something log-tail must not read
(a foreign file through a symlink, a hard link, a FIFO, a device, a mount), then puts the real
file back. The tailer, route and end-to-end tests run every one of them."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MARK = "FOREIGN-SECRET"
FOREIGN = f"root:x:0:0:{MARK}:/root:/bin/bash\n"
REAL = [f"real {i}" for i in range(5)]


@dataclass(frozen=True)
class Layout:
    folder: Path  # the followed file's folder
    log: Path  # the followed file: folder/app.log
    foreign: Path  # a folder elsewhere holding an app.log log-tail must never read
    saved: Path  # where the real file or folder waits while swapped out

    @property
    def foreign_log(self) -> Path:
        return self.foreign / "app.log"

    def write_foreign(self, lines: int = 3) -> None:
        with self.foreign_log.open("a") as handle:
            handle.write(FOREIGN * lines)


@dataclass(frozen=True)
class Swap:
    name: str
    reason: str  # the refusal followers must be told
    put: Callable[[Layout], None]
    back: Callable[[Layout], None]
    other_device: bool = False  # the foreign folder must be on another filesystem

    def __str__(self) -> str:
        return self.name


def _file_out(layout: Layout) -> None:
    layout.log.rename(layout.saved)


def _file_back(layout: Layout) -> None:
    layout.log.unlink()
    layout.saved.rename(layout.log)


def _file_symlink(layout: Layout) -> None:
    _file_out(layout)
    layout.log.symlink_to(layout.foreign_log)


def _folder_symlink(layout: Layout) -> None:
    layout.folder.rename(layout.saved)
    layout.folder.symlink_to(layout.foreign, target_is_directory=True)


def _folder_back(layout: Layout) -> None:
    layout.folder.unlink()
    layout.saved.rename(layout.folder)


def _hard_link(layout: Layout) -> None:
    _file_out(layout)
    os.link(layout.foreign_log, layout.log)


def _fifo(layout: Layout) -> None:
    _file_out(layout)
    os.mkfifo(layout.log)


def _device(layout: Layout) -> None:
    _file_out(layout)
    try:  # /dev/zero: read, it would stream NUL bytes forever
        os.mknod(layout.log, stat.S_IFCHR | 0o644, os.makedev(1, 5))
    except PermissionError:
        layout.saved.rename(layout.log)
        pytest.skip("creating a device node needs CAP_MKNOD")


def _mount(layout: Layout) -> None:
    if os.stat(layout.foreign).st_dev == os.stat(layout.folder).st_dev:
        pytest.skip("no second filesystem for a foreign file")
    _bind(layout)


def _bind(layout: Layout) -> None:
    done = subprocess.run(
        ["mount", "--bind", str(layout.foreign_log), str(layout.log)],
        capture_output=True,
        check=False,
        timeout=10,
    )
    if done.returncode != 0:
        pytest.skip(f"bind mount not permitted: {done.stderr.decode().strip()}")


def _unmount(layout: Layout) -> None:
    subprocess.run(["umount", str(layout.log)], check=True, capture_output=True, timeout=10)


SWAPS = [
    Swap("file-symlink", "symlink", _file_symlink, _file_back),
    Swap("folder-symlink", "symlink", _folder_symlink, _folder_back),
    Swap("hard-link", "hard_link", _hard_link, _file_back),
    Swap("fifo", "not_regular", _fifo, _file_back),
    Swap("device", "not_regular", _device, _file_back),
    Swap("mount", "other_device", _mount, _unmount, other_device=True),
    Swap("same-fs-mount", "other_mount", _bind, _unmount),
]


@contextlib.contextmanager
def layout(tmp_path: Path, swap: Swap) -> Iterator[Layout]:
    """The real file (REAL's lines) and a foreign one; whatever the test did, the swap is
    undone and any second-filesystem folder removed at the end."""
    if swap.other_device and Path("/dev/shm").is_dir():
        foreign = Path("/dev/shm") / f"sluice-foreign-{uuid.uuid4().hex}"
    else:
        foreign = tmp_path / "foreign"
    folder = tmp_path / "logs"
    folder.mkdir()
    foreign.mkdir()
    result = Layout(folder, folder / "app.log", foreign, tmp_path / "saved")
    result.log.write_text("".join(f"{line}\n" for line in REAL))
    result.write_foreign()
    try:
        yield result
    finally:
        if result.saved.exists() or swap.back is _unmount:  # umount fails if not mounted
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                swap.back(result)
        if foreign.is_relative_to("/dev/shm"):
            shutil.rmtree(foreign, ignore_errors=True)


def leaks(text: str) -> bool:
    """Whether ``text`` holds anything of the foreign file or of a device read."""
    return MARK in text or "root:" in text or "\x00" in text or "\\u0000" in text
