"""The allow-list: names in URLs, paths only in configuration, and a walk that follows nothing.

A request can only ever name a file; the name is looked up in a dict.

The configured paths are resolved once, when the configuration is read: a symlink in the
*configured* path (``/var/log`` pointing at ``/data/log``, say) is the operator's choice and is
taken as it is then. After that nothing is followed. Every look at a file (the stat of each
rotation check, every open) walks the resolved path from ``/`` one component at a time, each
folder opened with ``O_PATH | O_DIRECTORY | O_NOFOLLOW`` relative to the previous one, so a
folder swapped for a symlink later is refused, not followed (``O_NOFOLLOW`` alone guards only
the last component). The file itself must then be, as seen through the descriptor actually
read (``fstat``, so a swap between a check and a read changes nothing):

- a regular file: not a symlink, FIFO, socket, device or folder;
- with one link (``st_nlink == 1``): a hard link to ``/etc/passwd`` is a regular file too;
- on the device and the mount of the folder it was reached through: a file mounted over the
  path (``mount --bind``) is not the folder's file, even from the same filesystem (the mount
  is compared by the ``mnt_id`` of ``/proc/self/fdinfo``, where there is a ``/proc``).

Anything else raises :class:`Refused` with a short ``reason`` (one of :data:`REASONS`); a
missing component is ``None``, not a refusal: a file may come and go. Other errors (out of
descriptors, say) are raised as they are: they say nothing about the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_FOLDER = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_ENTRY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # the entry itself: nothing is really opened

REASONS = (
    "symlink",
    "not_directory",
    "not_regular",
    "hard_link",
    "other_device",
    "other_mount",
    "unreadable",
)


class ConfigError(ValueError):
    pass


class Refused(Exception):
    """The path leads somewhere log-tail must not read; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_files(spec: str, spec_file: Path | None, own_log: Path | None = None) -> dict[str, Path]:
    """The allow-list from ``SLUICE_LOG_TAIL_FILES`` and its file. ``own_log`` is log-tail's
    own ``SLUICE_LOG_FILE``: following it would feed itself (each change it reads wakes the
    watcher, which logs, into that file), so it is refused, by path and, where both exist,
    by identity (a hard link, another path to it)."""
    items = [i for i in spec.split(",") if i.strip()]
    if spec_file is not None:
        try:
            text = spec_file.read_text()
        except OSError as exc:
            raise ConfigError(f"SLUICE_LOG_TAIL_FILES_FILE {spec_file}: {exc.strerror}") from None
        items += [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    files: dict[str, Path] = {}
    for item in items:
        name, sep, raw = item.strip().partition("=")
        name = name.strip()
        if not sep or not raw.strip():
            raise ConfigError(f"log file {item.strip()!r} is not name=path")
        if not NAME.match(name):
            raise ConfigError(f"log file name {name!r} must match {NAME.pattern}")
        if name in files:
            raise ConfigError(f"log file name {name!r} is given twice")
        path = Path(raw.strip())
        if not path.is_absolute():
            raise ConfigError(f"log file {name}: {raw.strip()!r} is not an absolute path")
        resolved = path.resolve()  # the operator's symlinks, now, once; none after this
        if resolved == Path(resolved.anchor):
            raise ConfigError(f"log file {name}: {raw.strip()!r} is not a file path")
        if own_log is not None and _same_file(resolved, own_log):
            raise ConfigError(
                f"log file {name}: {raw.strip()!r} is log-tail's own SLUICE_LOG_FILE; "
                "following it would feed itself"
            )
        files[name] = resolved
    return files


def _same_file(path: Path, other: Path) -> bool:
    if path == other.resolve():
        return True
    try:
        mine, theirs = path.stat(), other.stat()
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def open_folder(path: Path) -> int | None:
    """An ``O_PATH`` descriptor of ``path``'s folder, reached from ``/`` without following a
    symlink anywhere; None if a component is missing. The caller closes it."""
    fd = os.open("/", _FOLDER)
    try:
        for part in path.parts[1:-1]:
            if part in (".", ".."):
                raise Refused("not_directory", f"{path} is not a normalised path")
            try:
                child = os.open(part, _FOLDER, dir_fd=fd)
            except OSError as exc:
                _explain(exc, fd, part, path)
                os.close(fd)
                return None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def folder_identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the folder the walk reaches now; None if there is none."""
    try:
        folder = open_folder(path)
    except (Refused, OSError):
        return None
    if folder is None:
        return None
    try:
        info = os.fstat(folder)
    finally:
        os.close(folder)
    return info.st_dev, info.st_ino


def check_path(path: Path) -> os.stat_result | None:
    """The stat of ``path`` itself (never of a symlink's target), through the walk, after the
    same checks as :func:`open_checked`; None if it is not there."""
    folder = open_folder(path)
    if folder is None:
        return None
    try:
        try:
            entry = os.open(path.name, _ENTRY, dir_fd=folder)
        except OSError as exc:
            _explain(exc, folder, path.name, path)
            return None
        try:
            info = os.fstat(entry)
            check_file(info, os.fstat(folder).st_dev, path)
            check_mount(entry, folder, path)
            return info
        finally:
            os.close(entry)
    finally:
        os.close(folder)


def open_checked(path: Path) -> tuple[int, os.stat_result] | None:
    """A read-only descriptor of ``path`` and its ``fstat``, opened through the walk and
    validated on the descriptor itself; None if it is not there; Refused if it may not be read.

    The entry is looked at before it is opened, so a FIFO or device node is not even opened
    (opening some devices does something); what decides is the ``fstat`` of what was opened.
    """
    folder = open_folder(path)
    if folder is None:
        return None
    try:
        device = os.fstat(folder).st_dev
        try:
            check_file(os.stat(path.name, dir_fd=folder, follow_symlinks=False), device, path)
            fd = os.open(path.name, _FILE, dir_fd=folder)
        except OSError as exc:
            _explain(exc, folder, path.name, path)
            return None
        try:
            info = os.fstat(fd)
            check_file(info, device, path)
            check_mount(fd, folder, path)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(folder)
    return fd, info


def check_file(info: os.stat_result, folder_device: int, path: Path) -> None:
    """Refused unless ``info`` is a regular file with one link on ``folder_device``."""
    if stat.S_ISLNK(info.st_mode):
        raise Refused("symlink", f"{path} is a symlink")
    if not stat.S_ISREG(info.st_mode):
        raise Refused("not_regular", f"{path} is not a regular file")
    if info.st_nlink != 1:
        raise Refused("hard_link", f"{path} has {info.st_nlink} links")
    if info.st_dev != folder_device:
        raise Refused("other_device", f"{path} is on another device than its folder")


def check_mount(fd: int, folder: int, path: Path) -> None:
    """Refused if ``fd`` is on another mount than ``folder`` (where /proc tells)."""
    mine, theirs = mount_id(fd), mount_id(folder)
    if mine is not None and theirs is not None and mine != theirs:
        raise Refused("other_mount", f"{path} is mounted over its folder's file")


def mount_id(fd: int) -> int | None:
    """The mount ``fd`` is on, from /proc/self/fdinfo; None without a /proc that says."""
    try:
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(info, 4096)
    finally:
        os.close(info)
    for line in text.splitlines():
        if line.startswith(b"mnt_id:"):
            return int(line.split()[1])
    return None


def _explain(exc: OSError, folder: int, part: str, path: Path) -> None:
    """Turn a failed open/stat of ``part`` (in ``folder``) into a Refused; return if missing."""
    if exc.errno == errno.ENOENT:
        return
    if exc.errno in (errno.EACCES, errno.EPERM):
        raise Refused("unreadable", f"{path}: {exc.strerror}") from None
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        link = False
        with contextlib.suppress(OSError):
            link = stat.S_ISLNK(os.stat(part, dir_fd=folder, follow_symlinks=False).st_mode)
        if link:
            raise Refused("symlink", f"{path}: {part} is a symlink") from None
        raise Refused("not_directory", f"{path}: {part} is not a folder") from None
    if exc.errno == errno.ENXIO:  # a socket
        raise Refused("not_regular", f"{path} is not a regular file") from None
    raise exc
