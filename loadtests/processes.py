"""Finding the local stack's gunicorn masters (for rolling restarts), without locust:
the test suite imports this, and importing locust would patch its process with gevent."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def is_gunicorn(argv: list[str]) -> bool:
    """gunicorn itself (argv[0], or the script a python runs), not a shell that starts it."""
    return any(arg.endswith("/gunicorn") for arg in argv[:2])


def gunicorn_masters() -> list[int]:
    """LOADTEST_MASTERS if given, else the gunicorn masters of this checkout (make run's)."""
    given = os.environ.get("LOADTEST_MASTERS")
    if given:
        return [int(pid) for pid in given.split(",") if pid.strip()]
    conf = str(ROOT / "deploy" / "gunicorn.conf.py")
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if is_gunicorn(argv) and conf in argv:
            parents[int(entry.name)] = ppid
    return [pid for pid, ppid in parents.items() if ppid not in parents]
