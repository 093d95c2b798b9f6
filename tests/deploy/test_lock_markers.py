"""requirements-runtime.lock is installed with ``pip install --no-deps`` (the Dockerfile): it must
hold every dependency for every Python the project claims, not only the one that froze it.
Debian bookworm's python3.11 is 3.11.2, where redis needs async-timeout (below 3.11.3)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import ROOT

LOCK = ROOT / "requirements-runtime.lock"
# The interpreters `requires-python = ">=3.11"` admits that matter for markers: each
# python_full_version bound a pinned package's metadata names, either side, and later minors.
PYTHONS = ("3.11.0", "3.11.2", "3.11.3", "3.11.14", "3.12.0", "3.13.0", "3.14.0")


def pins() -> dict[str, tuple[str, Requirement]]:
    found: dict[str, tuple[str, Requirement]] = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            found[canonicalize_name(req.name)] = (str(req.specifier).removeprefix("=="), req)
    return found


def environment(python: str) -> dict[str, str]:
    return {
        "python_full_version": python,
        "python_version": ".".join(python.split(".")[:2]),
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "extra": "",
    }


def test_every_dependency_of_the_runtime_lock_is_pinned_for_every_claimed_python() -> None:
    locked = pins()
    missing: list[str] = []
    for python in PYTHONS:
        env = environment(python)
        wanted = {n for n, (_, r) in locked.items() if r.marker is None or r.marker.evaluate(env)}
        for name in sorted(wanted):
            try:
                dist = distribution(name)
            except PackageNotFoundError:
                # Only a pin this interpreter's markers skip may be absent from the venv (its
                # own requirements are then unread: async-timeout 5.0.1 has none).
                marker = locked[name][1].marker
                assert marker is not None, f"{name} is pinned for every Python, not installed"
                assert not marker.evaluate(environment(platform.python_version()))
                continue
            # the metadata read here is of the very version pinned (the venv installs the lock)
            assert dist.version == locked[name][0], f"{name}: venv {dist.version}, lock pins"
            for text in dist.requires or []:
                dep = Requirement(text)
                if dep.marker is not None and not dep.marker.evaluate(env):
                    continue
                dep_name = canonicalize_name(dep.name)
                if dep_name not in wanted:
                    missing.append(f"python {python}: {name} needs {text}")
                elif not dep.specifier.contains(locked[dep_name][0], prereleases=True):
                    missing.append(f"python {python}: {name} needs {text}, lock pins other")
    assert missing == []


def test_the_marker_line_is_skipped_where_it_is_not_needed() -> None:
    _, req = pins()["async-timeout"]
    assert req.marker is not None
    assert req.marker.evaluate(environment("3.11.2"))
    assert not req.marker.evaluate(environment("3.11.3"))
    assert not req.marker.evaluate(environment("3.13.0"))
