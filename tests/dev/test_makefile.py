"""The Makefile's help lists every target, one line each; fmt formats what lint checks; the
typecheck covers the code, the dev tool and the tests."""

from __future__ import annotations

import re
import subprocess

from tests.support.paths import ROOT

MAKEFILE = (ROOT / "Makefile").read_text()


def recipe(target: str) -> str:
    return MAKEFILE[MAKEFILE.index(f"\n{target}:") :].split("\n\n")[0]


def test_help_lists_every_target() -> None:
    phony = re.search(r"^\.PHONY:(.*?)\n\n", MAKEFILE, re.S | re.M)
    assert phony is not None
    targets = phony.group(1).replace("\\\n", " ").split()
    shown = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    named = {word for line in shown.splitlines() for word in line.split()[:3]}
    named |= {"system-deps-test"} if "system-deps-test" in shown else set()
    assert [t for t in targets if t not in named and f"make {t}" not in shown] == []
    assert all(line.startswith("make ") for line in shown.splitlines())


def test_fmt_formats_what_lint_checks() -> None:
    lint, fmt = recipe("lint"), recipe("fmt")
    assert "$(PY_DIRS)" in lint and "$(PY_DIRS)" in fmt
    dirs = re.search(r"^PY_DIRS := (.*)$", MAKEFILE, re.M)
    assert dirs is not None and set(dirs.group(1).split()) >= {"services", "dev", "tests"}


def test_typecheck_covers_services_dev_and_tests() -> None:
    assert "mypy --strict services/ dev/ tests/" in recipe("typecheck")
