"""``python -m sluice_dev.supervise``: how ``make run`` runs what the services depend on.

honcho ends the whole stack when any one process exits, and stops each with SIGTERM. For
Redis, Prometheus, the progress worker and nginx that is wrong twice over: one of them
dying must not take the services down (they report unready, and the dependency comes back),
and nginx must stop gracefully (SIGQUIT: open streams end as their services drain them)
rather than cut every stream at once. So each runs under this supervisor:

- the child runs in a session of its own, so honcho's signals reach only the supervisor;
- when it exits on its own, it is started again after a pause (2 s, doubling to 30 s, back
  to 2 s once it has stayed up a minute); honcho never sees it go;
- on SIGTERM/SIGINT the child gets ``--stop-signal``; if it has not exited after
  ``--kill-after`` seconds its process group is killed, and the supervisor exits with its code;
- the child is killed by the kernel if the supervisor itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

FIRST_PAUSE = 2.0
LONGEST_PAUSE = 30.0
STABLE_AFTER = 60.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when the supervisor dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor:
    def __init__(self, name: str, argv: Sequence[str], stop_signal: int, kill_after: float) -> None:
        self.name = name
        self.argv = list(argv)
        self.stop_signal = stop_signal
        self.kill_after = kill_after
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping_since: float | None = None

    def _say(self, text: str) -> None:
        print(f"supervise[{self.name}]: {text}", file=sys.stderr, flush=True)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping_since is not None:
            return  # honcho signals the group; a repeat changes nothing
        self.stopping_since = time.monotonic()
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(self.stop_signal)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, start_new_session=True, preexec_fn=_die_with_parent)

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        """The child's exit code; escalates to SIGKILL of its group ``kill_after`` s into a stop."""
        while True:
            try:
                return child.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
            stopping = self.stopping_since
            if stopping is not None and time.monotonic() - stopping > self.kill_after:
                self._say(f"still running {self.kill_after:g} s after the stop: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stopping_since is None and time.monotonic() < deadline:
            time.sleep(0.1)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        pause = FIRST_PAUSE
        while True:
            started = time.monotonic()
            self.child = self._spawn()
            if self.stopping_since is not None:  # a stop that came during the spawn
                self._on_stop_late()
            code = self._wait(self.child)
            if self.stopping_since is not None:
                return code if code >= 0 else 128 - code  # a signal's death, as a shell says
            if time.monotonic() - started > STABLE_AFTER:
                pause = FIRST_PAUSE
            self._say(
                f"exited with {code}; the rest of the stack stays up (services that need it"
                f" report unready on /readyz); restarting in {pause:g} s"
            )
            self._pause(pause)
            if self.stopping_since is not None:
                return code if code >= 0 else 128 - code
            pause = min(pause * 2, LONGEST_PAUSE)

    def _on_stop_late(self) -> None:
        assert self.child is not None
        with contextlib.suppress(ProcessLookupError):
            self.child.send_signal(self.stop_signal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice_dev.supervise")
    parser.add_argument("--name", required=True)
    parser.add_argument("--stop-signal", default="TERM", choices=["TERM", "QUIT", "INT"])
    parser.add_argument("--kill-after", type=float, default=20.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (… -- argv)")
    stop = getattr(signal, f"SIG{args.stop_signal}")
    return Supervisor(args.name, command, stop, args.kill_after).run()


if __name__ == "__main__":
    raise SystemExit(main())
