"""The compose stack for real: built from the unchanged Dockerfile, run by a real Docker engine
or by podman (installed when missing, as root; stand-in images where no registry answers).

Selected with ``-m containers``; part of ``make test``. Without an engine and without root to
install podman, these tests fail with the reason: they never skip.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy.containers.engine import Engine, engine_for
from deploy.containers.stack import ROOT, Stack, new_stack
from deploy.containers.standins import build_sluice, ensure_base, ensure_standins

# What the container tests measured, printed at the end of the run (and kept in log_dir).
FIGURES: dict[str, float | str] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.write_line(f"container figures: {json.dumps(FIGURES)}")


# Package-scoped: the engine (podman's service) and the stack's containers go when
# tests/containers ends, not at the end of the session (the e2e timing tests run after).
@pytest.fixture(scope="package")
def engine(log_dir: Path) -> Iterator[Engine]:
    started = time.monotonic()
    with engine_for(ensure_base) as found:
        FIGURES["engine"] = found.kind
        if found.kind == "podman":
            built = ensure_standins(found)
            FIGURES["standins_built_s"] = round(sum(built.values()), 1)
        FIGURES["engine_and_standins_s"] = round(time.monotonic() - started, 1)
        FIGURES["image_build_s"] = round(build_sluice(found), 1)
        try:
            yield found
        finally:
            (log_dir / "container-figures.json").write_text(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="package")
def stack(engine: Engine, log_dir: Path) -> Iterator[Stack]:
    built = new_stack(engine, log_dir / "compose")
    try:
        FIGURES["up_to_healthy_s"] = round(built.up(), 1)
        yield built
    finally:
        left = built.down()
        FIGURES["left_after_compose_down"] = json.dumps(left)
        # kept past pytest's rotation of its temporary folders (other sessions run here too)
        kept = ROOT / ".run" / "compose"
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copy(built.log_path, kept / built.log_path.name)
        assert engine.project_objects(built.project) == {
            "container": [],
            "network": [],
            "volume": [],
        }
