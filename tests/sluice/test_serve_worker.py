"""The job worker as the image starts it (``python -m sluice.serve``, SLUICE_SERVICE is
progress-worker): its metrics folder need not exist beforehand, and its /metrics listens
where Prometheus's container can reach it (every interface), while ``make run``'s worker
stays on loopback."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_sync

from sluice.serve import command
from tests.support.metrics import wait_for
from tests.support.procs import Proc, free_port, running, start, start_service

KEY = "sk-test-serve-worker-0000000000000001"
AUTH = {"Authorization": f"Bearer {KEY}"}


def listening_address(port: int) -> str | None:
    """The local address a TCP socket LISTENs on for ``port``, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            return ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
    return None


def test_the_entrypoint_gives_the_worker_every_interface_unless_told() -> None:
    _, env = command({"SLUICE_SERVICE": "progress-worker"})
    assert env["SLUICE_PROGRESS_WORKER_METRICS_HOST"] == "0.0.0.0"
    _, env = command(
        {"SLUICE_SERVICE": "progress-worker", "SLUICE_PROGRESS_WORKER_METRICS_HOST": "127.0.0.1"}
    )
    assert env["SLUICE_PROGRESS_WORKER_METRICS_HOST"] == "127.0.0.1"


class WorkerStack:
    def __init__(self, log_dir: Path, redis_url: str, metrics_dir: Path, module: str) -> None:
        self.metrics_port = free_port()
        self.env = {
            "SLUICE_API_KEYS": KEY,
            "SLUICE_REDIS_URL": redis_url,
            "SLUICE_SERVICE_NAME": "progress",
            "SLUICE_RATE_LIMIT": "10000/minute",
            "SLUICE_PROGRESS_WORKER_METRICS_PORT": str(self.metrics_port),
        }
        self.api = start_service("progress", log_dir, self.env, workers=1)
        worker_env = {
            **self.env,
            "SLUICE_SERVICE": "progress-worker",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        self.worker: Proc = start(
            f"serve-worker-{self.metrics_port}",
            [sys.executable, "-m", module],
            log_dir,
            worker_env,
        )
        wait_for(lambda: "job worker started" in self.worker.log(), 20, what="job worker up")


@pytest.fixture
def worker_stack(log_dir: Path, redis_server: Proc, tmp_path: Path) -> Iterator[WorkerStack]:
    redis_sync.Redis.from_url(redis_server.extra["url"]).flushdb()
    # As in the image: the folder is named but nothing created it (gunicorn's hook never runs).
    missing = tmp_path / "not-yet" / "sluice-metrics"
    stack = WorkerStack(log_dir, redis_server.extra["url"], missing, "sluice.serve")
    with running(stack.worker, stack.api):
        yield stack


def test_a_job_succeeds_when_the_metrics_folder_did_not_exist(worker_stack: WorkerStack) -> None:
    response = httpx.post(
        f"{worker_stack.api.url}/jobs",
        headers=AUTH,
        json={"kind": "simulate", "params": {"steps": 3, "delay": 0.01}},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + 20
    state = ""
    while time.monotonic() < deadline:
        state = httpx.get(f"{worker_stack.api.url}/jobs/{job_id}", headers=AUTH).json()["state"]
        if state not in ("queued", "running"):
            break
        time.sleep(0.05)
    log = worker_stack.worker.log()
    assert state == "succeeded", log
    assert "FileNotFoundError" not in log
    # and its metrics say so, on the port Prometheus scrapes
    body = httpx.get(f"http://127.0.0.1:{worker_stack.metrics_port}/metrics").text
    finished = [
        line
        for line in body.splitlines()
        if line.startswith("sluice_progress_jobs_finished_total{") and 'state="succeeded"' in line
    ]
    assert finished and float(finished[0].rsplit(" ", 1)[1]) >= 1, body[:2000]


def test_the_image_worker_metrics_listen_on_every_interface(worker_stack: WorkerStack) -> None:
    assert listening_address(worker_stack.metrics_port) == "0.0.0.0"


def test_make_runs_worker_stays_on_loopback(
    log_dir: Path, redis_server: Proc, tmp_path: Path
) -> None:
    """make run starts ``python -m progress.worker`` itself: the setting's default holds."""
    stack = WorkerStack(
        log_dir, redis_server.extra["url"], tmp_path / "m", "sluice_services.progress.worker"
    )
    with running(stack.worker, stack.api):
        assert listening_address(stack.metrics_port) == "127.0.0.1"
