"""`make run`'s own Procfile under honcho, on free ports: the stack a new user gets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sluice import devstack
from tests.support.procs import start_local_stack


def readme_block(section: str, language: str) -> str:
    """The first ```language block after the README heading ``section``."""
    readme = (devstack.ROOT / "README.md").read_text()
    rest = readme[readme.index(f"\n{section}\n") :]
    start = rest.index(f"```{language}\n") + len(language) + 4
    return rest[start : rest.index("```", start)]


def test_procfile_starts_the_stack_and_ctrl_c_stops_it(tmp_path: Path, log_dir: Path) -> None:
    stack = start_local_stack(tmp_path, log_dir)
    key, base, printed = stack.key, stack.base, stack.printed
    try:
        assert "progress: Redis mode" in printed
        assert base in printed
        with httpx.stream("GET", f"{base}/toy-stream", timeout=10) as response:
            lines = response.iter_lines()
            assert next(lines) == "Starting stream..."
        token = httpx.post(
            f"{base}/auth/stream-token",
            headers={"Authorization": f"Bearer {key}"},
            json={"path": "/dummy-events"},
        )
        assert token.status_code == 200
        refused = httpx.get(f"{base}/toy-stream", headers={"Authorization": "Bearer no"})
        assert refused.status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        chat = httpx.get(f"{base}/chat-stream?prompt=hi", timeout=10)
        assert chat.text.startswith("Sluice streams tokens")
        # The README's openai-SDK snippet as written, but for this stack's port and key file.
        snippet = readme_block("## chat-proxy", "python")
        assert "http://127.0.0.1:8080/v1" in snippet and '".run/dev-api-key"' in snippet
        code = snippet.replace("http://127.0.0.1:8080", base).replace(
            '".run/dev-api-key"', repr(str(tmp_path / "dev-api-key"))
        )
        sdk = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert sdk.returncode == 0, sdk.stderr
        assert sdk.stdout == chat.text  # the same model's completion: every token, in order
        job = httpx.post(
            f"{base}/jobs",
            headers=auth,
            timeout=10,
            json={"kind": "simulate", "params": {"steps": 3, "delay": 0.05}},
        )
        assert job.status_code == 202
        events = httpx.get(f"{base}{job.json()['events_url']}", headers=auth, timeout=20).text
        assert "event: complete" in events
        # The README's examples, as deploy/smoke.sh (and `make compose-smoke`) runs them.
        smoke = subprocess.run(
            [str(devstack.ROOT / "deploy" / "smoke.sh"), base],
            env={**os.environ, "SLUICE_SMOKE_KEY": key},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        # log-tail follows the stack's own nginx access log: our requests appear live.
        with httpx.stream("GET", f"{base}/logs/nginx?lines=0", headers=auth, timeout=10) as tail:
            lines = tail.iter_lines()
            marker = f"/toy-stream-marker-{time.time_ns()}"
            httpx.get(f"{base}{marker}")
            assert any(marker in next(lines) for _ in range(5))
    finally:
        started = time.monotonic()
        code = stack.stop()  # SIGINT, as Ctrl-C
    assert time.monotonic() - started < 15
    assert code is not None
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == [], "processes outlived Ctrl-C"
