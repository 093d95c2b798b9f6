from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Proc, running, start_redis
from tests.support.upstream import mock_upstream_proc


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def mock_upstream(log_dir: Path) -> Iterator[Proc]:
    yield from mock_upstream_proc(log_dir)


@pytest.fixture(scope="session")
def redis_server(log_dir: Path) -> Iterator[Proc]:
    proc = start_redis(log_dir)
    with running(proc):
        yield proc


# Keys the suite configures anywhere; none may appear in any log of any process.
SECRET_MARKERS = ("sk-e2e-", "sk-test-", "sk-dev-")
# make run says the dev key to its user once, in its ready line and examples, above the logs.
BANNER, LOGS_BELOW = "Sluice is ready: ", "--- logs ---\n"


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_log(log_dir: Path) -> Iterator[None]:
    yield
    leaks = []
    for path in log_dir.rglob("*.log"):
        text = path.read_text(errors="replace")
        if text.startswith(BANNER) and LOGS_BELOW in text:
            text = text.split(LOGS_BELOW, 1)[1]
        leaks += [f"{path.name}: {m}" for m in SECRET_MARKERS if m in text]
    assert not leaks, f"API keys found in logs: {leaks}"
