"""`make run`'s own Procfile under honcho, on free ports: the stack a new user gets."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sluice import devstack
from tests.support.procs import free_port, start, wait_http


def test_procfile_starts_the_stack_and_ctrl_c_stops_it(tmp_path: Path, log_dir: Path) -> None:
    env = {"SLUICE_NGINX_PORT": str(free_port()), "SLUICE_DEMO_PORT": str(free_port())}
    printed = devstack.prepare(tmp_path, env)
    key = (tmp_path / "dev-api-key").read_text().strip()
    honcho = str(Path(sys.executable).parent / "honcho")
    proc = start("honcho", [honcho, "-f", str(tmp_path / "Procfile"), "start"], log_dir, env)
    base = f"http://127.0.0.1:{env['SLUICE_NGINX_PORT']}"
    try:
        wait_http(f"http://127.0.0.1:{env['SLUICE_DEMO_PORT']}/readyz", proc, timeout=30)
        wait_http(f"{base}/healthz", proc, timeout=10)
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
        assert (
            httpx.get(f"{base}/toy-stream", headers={"Authorization": "Bearer no"}).status_code
            == 401
        )
    finally:
        proc.popen.send_signal(signal.SIGINT)  # what Ctrl-C sends
        started = time.monotonic()
        code = proc.popen.wait(20)
    assert time.monotonic() - started < 15
    assert code is not None
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == [], "processes outlived Ctrl-C"
