"""``python -m sluice_dev start`` (make run's second half) when things go wrong around it:
killed, its terminal closed, a stack that never becomes ready. Nothing of the stack may be
left running, and it says what it waited for."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sluice.procfs import children
from tests.support.paths import ROOT
from tests.support.procs import free_port


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def plan(run_dir: Path, marker: Path) -> None:
    """A Procfile of one long process that never answers the readiness URL."""
    run_dir.mkdir()
    (run_dir / "Procfile").write_text(f"sleeper: sh -c 'echo $$ > {marker}; exec sleep 300'\n")
    (run_dir / "stop-timeout").write_text("5\n")
    never = f"http://127.0.0.1:{free_port()}/readyz"
    (run_dir / "ready.json").write_text(json.dumps({"urls": [never], "banner": "", "details": ""}))


def start(run_dir: Path, log: Path, timeout: float = 60) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from sluice_dev import stack; from pathlib import Path;"
        f" sys.exit(stack.start(Path({str(run_dir)!r}), Path({str(ROOT)!r}), {timeout}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=log.open("wb"), cwd=ROOT)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP])
def test_the_stack_stops_when_make_run_is_killed_or_its_terminal_closes(
    tmp_path: Path, how: signal.Signals
) -> None:
    marker = tmp_path / "sleeper.pid"
    plan(tmp_path / "run", marker)
    parent = start(tmp_path / "run", tmp_path / "out.log")
    try:
        assert wait_for(lambda: marker.exists() and marker.read_text().strip(), 30)
        sleeper = int(marker.read_text())
        assert sleeper in descendants(parent.pid), (sleeper, descendants(parent.pid))
        parent.send_signal(how)
        # honcho stops its processes as on Ctrl-C: TERM, then KILL after stop-timeout (5 s)
        assert wait_for(lambda: not alive(sleeper), 30), f"the stack outlived {how.name}"
        parent.wait(10)
    finally:
        if parent.poll() is None:
            parent.kill()
        if marker.exists() and alive(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)


def test_a_stack_that_never_gets_ready_says_what_it_waited_for(tmp_path: Path) -> None:
    marker = tmp_path / "sleeper.pid"
    plan(tmp_path / "run", marker)
    log = tmp_path / "out.log"
    parent = start(tmp_path / "run", log, timeout=2)
    try:
        assert wait_for(lambda: "NOT ready after 2 s" in log.read_text(errors="replace"), 20)
        said = log.read_text()
        assert "no answer from http://127.0.0.1:" in said and "/readyz" in said
        assert "Sluice is ready" not in said
        parent.send_signal(signal.SIGINT)  # Ctrl-C: honcho stops its process
        assert parent.wait(20) is not None
        assert wait_for(lambda: not alive(int(marker.read_text())), 10)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_port_in_use_stops_it_before_anything_starts(tmp_path: Path) -> None:
    """An earlier make run still on its ports would answer /readyz for this one: it says
    which port is taken instead, and starts nothing."""
    marker = tmp_path / "sleeper.pid"
    plan(tmp_path / "run", marker)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ready = json.loads((tmp_path / "run" / "ready.json").read_text())
        ready["ports"] = {"nginx": free_port(), "demo": port}
        (tmp_path / "run" / "ready.json").write_text(json.dumps(ready))
        log = tmp_path / "out.log"
        parent = start(tmp_path / "run", log)
        assert parent.wait(20) == 1
    said = log.read_text()
    assert f"make run: in use already: {port} (demo);" in said, said
    assert not marker.exists()  # nothing was started


def test_make_run_lists_every_port_it_will_listen_on(tmp_path: Path) -> None:
    from sluice_dev import stack
    from tests.support.procs import PROJECT

    env = {"SLUICE_DEV_NGINX_PORT": "18080", "SLUICE_DEV_DEMO_PORT": "18001"}
    stack.prepare(tmp_path, env, PROJECT)
    ports = json.loads((tmp_path / "ready.json").read_text())["ports"]
    assert ports["nginx"] == 18080 and ports["demo"] == 18001
    assert {"chat-proxy", "log-tail", "mock-upstream", "progress"} <= set(ports)
