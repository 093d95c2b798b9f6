from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, running, start_redis


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def redis_server(log_dir: Path) -> Iterator[Proc]:
    proc = start_redis(log_dir)
    with running(proc):
        yield proc
