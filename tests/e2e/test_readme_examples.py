"""Every shell example of the README, as written, against make run's stack in the mode it
picks (Redis, when redis-server is installed): deploy/readme_examples.py runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy import readme_examples
from tests.support.paths import ROOT
from tests.support.procs import start_local_stack


def test_the_examples_are_the_readmes_service_guides() -> None:
    found = readme_examples.examples((ROOT / "README.md").read_text())
    text = "\n".join(found)
    for route in (
        "/toy-stream",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/chat-stream",
        "/jobs",
        "/progress",
        "/logs/nginx",
    ):
        assert route in text, route
    assert "/price-feed/" not in text  # the walkthrough's route exists once the service is made


def test_a_failing_example_fails_the_run(tmp_path: Path) -> None:
    # Nothing listens on this port: a curl that gets no answer must fail the example.
    done = readme_examples.run(
        "curl -N http://127.0.0.1:8080/toy-stream\n", "http://127.0.0.1:9", "k"
    )
    assert done.returncode != 0 and "README example failed" in done.stderr


def test_every_readme_example_runs_as_written_under_make_run(tmp_path: Path, log_dir: Path) -> None:
    # The seed's /logs is 20 lines 1.5 s apart: paced faster (a dev setting), as written else.
    stack = start_local_stack(tmp_path, log_dir, {"SLUICE_DEV_LOG_TAIL_SEED_DELAY": "0.1"})
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "readme_examples.py"), stack.base],
            env={**os.environ, "SLUICE_SMOKE_KEY": stack.key},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        stack.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "README examples ran as written" in run.stdout
    assert "Redis: redis://127.0.0.1:" in stack.printed  # make run's default mode: Redis
