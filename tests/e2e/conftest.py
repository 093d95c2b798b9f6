from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, running, start_nginx, start_service

DEMO_ENV = {
    "SLUICE_DEMO_TOY_DELAY": "0.3",
    "SLUICE_DEMO_COUNTER_DELAY": "0.2",
    "SLUICE_DEMO_EVENTS_INTERVAL": "0.1",
    "SLUICE_HEARTBEAT_INTERVAL": "5",
}


@pytest.fixture(scope="session")
def demo(log_dir: Path) -> Iterator[Proc]:
    proc = start_service("demo", log_dir, DEMO_ENV, workers=2)
    with running(proc):
        yield proc


@pytest.fixture(scope="session")
def front_door(demo: Proc, log_dir: Path) -> Iterator[Proc]:
    proc = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, log_dir)
    with running(proc):
        yield proc
