"""The allow-list: names in URLs, paths only in configuration, resolved once.

A request can only ever name a file; the name is looked up in a dict. Opening uses
``O_NOFOLLOW`` and insists on a regular file, so a path later replaced by a symlink (to
/etc/shadow, say), a FIFO or a device is not read.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(ValueError):
    pass


def parse_files(spec: str, spec_file: Path | None) -> dict[str, Path]:
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
        files[name] = path.resolve()  # symlinks resolved now, once
    return files


def open_regular(path: Path) -> tuple[int, os.stat_result] | None:
    """A read-only descriptor of ``path`` if it is a regular file, not a symlink; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info


def stat_regular(path: Path) -> os.stat_result | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None
