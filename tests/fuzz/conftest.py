"""The stack the fuzzer runs against: every service under real gunicorn, and nginx in front."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import Proc, start_nginx, start_service

# "sk-test-" keys: the suite's no_key_in_any_log fixture fails if any process logs one,
# the wrong key included.
FUZZ_KEY = "sk-test-fuzz-000000000000000000001"
WRONG_KEY = "sk-test-fuzz-wrong-0000000000000002"
UPSTREAM_KEY = "sk-test-fuzz-upstream-00000000003"
FUZZ_KEY_ID = hashlib.sha256(FUZZ_KEY.encode()).hexdigest()[:8]

# Limits far above what a run sends: the fuzzer is to reach the routes, not the limiter
# (whose 429s are tested on their own in tests/e2e).
COMMON = {
    "SLUICE_API_KEYS": FUZZ_KEY,
    "SLUICE_RATE_LIMIT": "100000/minute",
    "SLUICE_HEARTBEAT_INTERVAL": "1",
}


class FuzzStack:
    """Each service (and an nginx in front of it) started the first time a test asks for it,
    so a run of some targets starts only what they need; all stopped at the end."""

    def __init__(self, log_dir: Path, folder: Path) -> None:
        self.log_dir = log_dir
        self.folder = folder
        self.procs: list[Proc] = []
        self._services: dict[str, Proc] = {}
        self._fronts: dict[str, Proc] = {}
        self.examples: dict[str, dict[str, object]] = {}

    def service(self, name: str) -> Proc:
        if name not in self._services:
            env = {**COMMON, **self._env(name)}
            proc = start_service(name, self.log_dir, env, workers=1)
            self.procs.append(proc)
            self._services[name] = proc
            self.examples[name] = self._examples(name, proc)
        return self._services[name]

    def front(self, name: str) -> Proc:
        """nginx with the shipped config, routing to this service (the others: 502)."""
        if name not in self._fronts:
            proc = start_nginx({name: f"127.0.0.1:{self.service(name).port}"}, self.log_dir)
            self.procs.append(proc)
            self._fronts[name] = proc
        return self._fronts[name]

    @property
    def services(self) -> dict[str, Proc]:
        return dict(self._services)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def _env(self, name: str) -> dict[str, str]:
        if name == "mock-upstream":
            return {
                "SLUICE_API_KEYS": f"{FUZZ_KEY},{UPSTREAM_KEY}",
                "SLUICE_DEV_MOCK_TOKEN_DELAY": "0.005",
            }
        if name == "chat-proxy":
            return {
                "SLUICE_UPSTREAM_BASE_URL": f"{self.service('mock-upstream').url}/v1",
                "SLUICE_UPSTREAM_API_KEY": UPSTREAM_KEY,
                "SLUICE_UPSTREAM_READ_TIMEOUT": "5",
                "SLUICE_CHAT_TOKEN_LIMIT": "1000000000/hour",
            }
        if name == "demo":
            return {
                "SLUICE_DEV_DEMO_TOY_DELAY": "0.01",
                "SLUICE_DEV_DEMO_COUNTER_DELAY": "0.01",
                "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.01",
            }
        if name == "progress":
            return {
                "SLUICE_DEV_PROGRESS_SEED_STEPS": "5",
                "SLUICE_DEV_PROGRESS_SEED_DELAY": "0.01",
                "SLUICE_PROGRESS_CHECKSUM_MAX_MB": "4",  # a fuzzed checksum job stays cheap
            }
        if name == "log-tail":
            app_log = self.folder / "app.log"
            app_log.write_text("".join(f"line {i} of the fuzzed log\n" for i in range(20)))
            return {
                # one file that exists, one that does not (yet)
                "SLUICE_LOG_TAIL_FILES": f"app={app_log},missing={self.folder / 'missing.log'}",
                "SLUICE_LOG_TAIL_POLL_INTERVAL": "0.1",
                "SLUICE_DEV_LOG_TAIL_SEED_DELAY": "0.01",
            }
        raise KeyError(name)

    def _examples(self, name: str, proc: Proc) -> dict[str, object]:
        """Things that exist, for the schema's examples: a file, a finished job of the key."""
        if name == "log-tail":
            return {"name": "app"}
        if name != "progress":
            return {}
        job = {"kind": "simulate", "params": {"steps": 3, "delay": 0.01}}
        answer = httpx.post(
            f"{proc.url}/jobs", json=job, headers={"Authorization": f"Bearer {FUZZ_KEY}"}
        )
        assert answer.status_code == 202, answer.text
        return {"job_id": answer.json()["id"], "/jobs": job}


# Package scope: the fuzzed jobs (up to 100 000 steps) stop with the stack, before the suite
# goes on to other packages.
@pytest.fixture(scope="package")
def fuzz_stack(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    stack = FuzzStack(log_dir, tmp_path_factory.mktemp("fuzz-logs"))
    try:
        yield stack
    finally:
        stack.stop()
