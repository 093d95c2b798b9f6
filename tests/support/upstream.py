"""Keys of the chat tests and the mock upstream they share (a session fixture)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import Proc, running, start_service

UPSTREAM_KEY = "sk-test-upstream-0000000000000000"
CALLER_KEY = "sk-test-caller-00000000000000000"
UPSTREAM_KEY_ID = hashlib.sha256(UPSTREAM_KEY.encode()).hexdigest()[:8]


def mock_upstream_proc(log_dir: Path) -> Iterator[Proc]:
    """A real mock upstream that demands its own key, like a hosted model server."""
    env = {
        "SLUICE_DEV_MOCK_TOKEN_DELAY": "0.005",
        "SLUICE_API_KEYS": UPSTREAM_KEY,
        "SLUICE_PUBLIC_ROUTES": "/mock/stats,/mock/requests/{request_id}",
    }
    proc = start_service("mock-upstream", log_dir, env, workers=1)
    with running(proc):
        yield proc
