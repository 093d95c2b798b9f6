"""sluice_dev.supervise: a dependency's death does not end make run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.paths import ROOT


def supervise(tmp_path: Path, script: str, *options: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "sluice_dev.supervise", "--name", "dep", *options, "--"]
    return subprocess.Popen(
        [*argv, "sh", "-c", script], cwd=ROOT, stderr=(tmp_path / "err").open("wb")
    )


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_dependency_that_dies_is_restarted_and_the_supervisor_stays(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = supervise(tmp_path, f"echo run >> {runs}; exit 3")
    try:
        assert wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 2, 5)
        assert proc.poll() is None  # honcho sees nothing exit
        assert "exited with 3; the rest of the stack stays up" in (tmp_path / "err").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) is not None


def test_stop_sends_the_stop_signal_and_returns_the_child_code(tmp_path: Path) -> None:
    got = tmp_path / "got"
    script = f"trap 'echo quit > {got}; exit 0' QUIT; echo up > {got}; while :; do sleep 0.1; done"
    proc = supervise(tmp_path, script, "--stop-signal", "QUIT")
    assert wait_for(lambda: got.exists() and got.read_text() == "up\n", 5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C reaches honcho, which sends TERM: either works
    assert proc.wait(5) == 0
    assert got.read_text() == "quit\n"


def test_a_child_that_ignores_the_stop_is_killed_after_kill_after(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = supervise(tmp_path, f"trap '' TERM; echo $$ > {pid_file}; sleep 60", "--kill-after", "1")
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 5)
    child = int(pid_file.read_text())
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 128 + signal.SIGKILL  # its child's death, as a shell reports it
    assert time.monotonic() - started < 3
    assert wait_for(lambda: not Path(f"/proc/{child}").exists(), 2)


def test_the_child_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = supervise(tmp_path, f"echo $$ > {pid_file}; exec sleep 60")
    assert wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 5)
    child = int(pid_file.read_text())
    proc.kill()  # as honcho's SIGKILL would
    proc.wait(5)
    assert wait_for(lambda: not Path(f"/proc/{child}").exists(), 2), "child outlived it"
