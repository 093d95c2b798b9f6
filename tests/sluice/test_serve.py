"""The container entrypoint and healthcheck, run for real (as the image runs them)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sluice.healthcheck import url
from sluice.registry import registry
from sluice.serve import GUNICORN_CONF, command
from tests.support.procs import Proc, free_port, running, start, wait_http


@pytest.mark.parametrize("name", list(registry().services))
def test_every_service_runs_under_the_shared_gunicorn_config(name: str) -> None:
    argv, env = command({"SLUICE_SERVICE": name})
    assert argv[1:3] == ["-c", str(GUNICORN_CONF)]
    assert argv[3] == registry()[name].gunicorn_app
    assert env == {
        "SLUICE_SERVICE_NAME": name,
        "SLUICE_BIND": f"0.0.0.0:{registry()[name].port}",
    }


def test_the_worker_and_unknown_names() -> None:
    assert command({"SLUICE_SERVICE": "progress-worker"})[0][1:] == [
        "-m",
        "sluice_services.progress.worker",
    ]
    with pytest.raises(SystemExit, match="not one of: chat-proxy, demo, log-tail"):
        command({"SLUICE_SERVICE": "nope"})


def test_a_companion_listens_on_its_declared_port_unless_moved() -> None:
    """The declaration's metrics port is the one the worker binds, Prometheus scrapes and
    the healthcheck asks: the entrypoint passes it, so no second default can disagree."""
    worker = registry().process("progress-worker").companion
    assert worker is not None
    _, env = command({"SLUICE_SERVICE": "progress-worker"})
    assert env[worker.port_variable] == str(worker.metrics_port)
    _, moved = command({"SLUICE_SERVICE": "progress-worker", worker.port_variable: "9113"})
    assert moved[worker.port_variable] == "9113"
    assert url({"SLUICE_SERVICE": "progress-worker", worker.port_variable: "9113"}) == (
        "http://127.0.0.1:9113/"
    )


def test_healthcheck_urls() -> None:
    assert url({"SLUICE_SERVICE": "demo", "SLUICE_BIND": "0.0.0.0:9001"}) == (
        "http://127.0.0.1:9001/healthz"
    )
    assert url({"SLUICE_SERVICE": "log-tail"}) == "http://127.0.0.1:8004/healthz"
    assert url({"SLUICE_SERVICE": "progress-worker"}) == "http://127.0.0.1:8013/"


def test_entrypoint_serves_and_the_healthcheck_sees_it(log_dir: object) -> None:
    from pathlib import Path

    port = free_port()
    env = {
        "SLUICE_SERVICE": "demo",
        "SLUICE_BIND": f"127.0.0.1:{port}",
        "PROMETHEUS_MULTIPROC_DIR": str(Path(str(log_dir)) / f"m-{port}"),
    }
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
    proc: Proc = start(
        f"serve-{port}", [sys.executable, "-m", "sluice.serve"], Path(str(log_dir)), env
    )
    with running(proc):
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        check = subprocess.run(
            [sys.executable, "-m", "sluice.healthcheck"],
            env={**os.environ, **env},
            capture_output=True,
            check=False,
        )
        assert check.returncode == 0
    down = subprocess.run(
        [sys.executable, "-m", "sluice.healthcheck"],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
    )
    assert down.returncode == 1
    assert b"unhealthy" in down.stderr
