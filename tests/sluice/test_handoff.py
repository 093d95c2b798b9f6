"""Rolling-restart hand-over: sibling states on disk, and the drain that waits for them.

The siblings are real child processes of the test (standing in for a gunicorn master's
workers); the drain is driven the way its SIGTERM handler drives it.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from sluice.drain import Drain, SignalDrain
from sluice.handoff import Siblings
from sluice.logs import request_id_var

pytestmark = pytest.mark.anyio

ME = 999_999_999  # "this worker": never a real child, so every child is a sibling

# A stand-in for a gunicorn master: forks sleeping "workers" and reaps those it kills, so
# its children are exactly the siblings a test set up (the test process has others).
MASTER = """
import subprocess, sys
kids = {}
for line in sys.stdin:
    cmd, _, arg = line.split()[0], None, line.split()[1:]
    if cmd == "fork":
        kid = subprocess.Popen(["sleep", "60"])
        kids[kid.pid] = kid
        print(kid.pid, flush=True)
    elif cmd == "kill":
        kid = kids.pop(int(arg[0]))
        kid.kill()
        kid.wait()
        print("ok", flush=True)
for kid in kids.values():
    kid.kill()
"""


class Master:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MASTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def _say(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def fork(self) -> int:
        return int(self._say("fork"))

    def kill(self, pid: int) -> None:
        assert self._say(f"kill {pid}") == "ok"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def master() -> Iterator[Master]:
    m = Master()
    yield m
    m.close()


def siblings(folder: Path, master: Master, me: int = ME) -> Siblings:
    return Siblings(folder, me=me, parent=master.proc.pid)


def test_states_on_disk(tmp_path: Path, master: Master) -> None:
    mine = siblings(tmp_path, master)
    a, b = master.fork(), master.fork()
    assert mine.booting() == {a, b}  # no word yet: starting
    siblings(tmp_path, master, me=a).mark("ready")
    siblings(tmp_path, master, me=b).mark("leaving")
    assert mine.others() == {a: "ready", b: "leaving"}
    assert mine.booting() == set()
    assert not list(tmp_path.glob("*.tmp"))
    mine.forget(a)
    mine.forget(a)  # twice is fine: the master may reap after a crash
    assert mine.state(a) == "booting"


async def test_wait_replaced_until_no_sibling_boots(tmp_path: Path, master: Master) -> None:
    mine = siblings(tmp_path, master)
    old, new = master.fork(), master.fork()
    siblings(tmp_path, master, me=old).mark("leaving")  # replaced like this one
    asyncio.get_running_loop().call_later(0.2, siblings(tmp_path, master, me=new).mark, "ready")
    started = time.monotonic()
    assert await mine.wait_replaced(timeout=10)
    assert 0.15 < time.monotonic() - started < 5


async def test_replacements_replaced_in_turn_are_waited_for(tmp_path: Path, master: Master) -> None:
    # A second SIGHUP while the first replacement boots: gunicorn kills it and forks
    # another; the old worker serves on until that one serves.
    mine = siblings(tmp_path, master)
    first = master.fork()
    loop = asyncio.get_running_loop()

    def second_sighup() -> None:
        master.kill(first)
        loop.call_later(0.3, siblings(tmp_path, master, me=master.fork()).mark, "ready")

    loop.call_later(0.2, second_sighup)
    started = time.monotonic()
    assert await mine.wait_replaced(timeout=10)
    assert time.monotonic() - started > 0.45


async def test_wait_replaced_gives_up_on_replacements_that_die_or_hang(
    tmp_path: Path, master: Master
) -> None:
    mine = siblings(tmp_path, master)
    master.kill(master.fork())
    assert not await mine.wait_replaced(timeout=10)  # at once: nobody boots, nobody serves
    master.fork()  # hangs at boot
    started = time.monotonic()
    assert not await mine.wait_replaced(timeout=0.3)
    assert time.monotonic() - started >= 0.3


class Handover:
    """Stands in for uvicorn's SIGTERM handler: records when the drain hands over."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain
        self.open_streams_then: int | None = None
        self.draining_then: bool | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.open_streams_then = self.drain.open_streams
        self.draining_then = self.drain.draining


def signal_drain(drain: Drain, handover: Handover, mine: Siblings | None) -> SignalDrain:
    sd = SignalDrain(drain, "test", margin=1.0, siblings=mine, handoff_timeout=10)
    sd._previous = handover  # what install() would have found
    sd._loop = asyncio.get_running_loop()
    return sd


async def test_replaced_worker_serves_until_ready_then_hands_over_at_drain_start(
    tmp_path: Path, master: Master
) -> None:
    drain = Drain(window=1.5)
    stream = drain.register("finish")  # ends at the window's end, after the lame-duck second
    stream.add_done_callback(lambda _: drain.unregister(stream))
    handover = Handover(drain)
    mine = siblings(tmp_path, master)
    siblings(tmp_path, master, me=master.fork()).mark("ready")  # from before: not a replacement
    new = master.fork()
    run = asyncio.create_task(signal_drain(drain, handover, mine)._run(15, None))
    await asyncio.sleep(0.3)
    assert not drain.draining  # still serving: the replacement is booting
    assert handover.open_streams_then is None
    siblings(tmp_path, master, me=new).mark("ready")
    await asyncio.wait_for(run, 10)
    assert handover.draining_then is True
    assert handover.open_streams_then == 1  # handed over before the stream ended
    assert stream.done()
    assert mine.state(ME) == "leaving"


async def test_without_replacements_it_hands_over_once_streams_are_gone(
    tmp_path: Path, master: Master
) -> None:
    for _ in range(2):  # a whole-master stop: every sibling is leaving too
        siblings(tmp_path, master, me=master.fork()).mark("leaving")
    for mine in (siblings(tmp_path, master), None):
        drain = Drain(window=0.3)
        stream = drain.register("reconnect")
        stream.add_done_callback(drain.unregister)
        handover = Handover(drain)
        started = time.monotonic()
        await asyncio.wait_for(signal_drain(drain, handover, mine)._run(15, None), 10)
        assert handover.open_streams_then == 0
        assert time.monotonic() - started < 5  # no wait for a replacement


async def test_a_replacement_that_never_serves_leaves_the_classic_drain(
    tmp_path: Path, master: Master
) -> None:
    drain = Drain(window=0.2)
    stream = drain.register("reconnect")
    stream.add_done_callback(lambda f: drain.unregister(f))
    handover = Handover(drain)
    mine = siblings(tmp_path, master)
    master.fork()  # hangs past the timeout
    sd = signal_drain(drain, handover, mine)
    sd.handoff_timeout = 0.3
    await asyncio.wait_for(sd._run(15, None), 10)
    assert handover.open_streams_then == 0  # kept its listener until its streams were gone


async def test_a_stream_let_in_after_a_hand_over_is_drained_in_what_is_left() -> None:
    drain = Drain(window=0.3)
    drain.begin(refuse=False)
    assert drain.draining and not drain.refusing  # readiness 503, streams still served
    late = drain.register("reconnect")
    assert not late.done()
    await asyncio.wait_for(late, 2)
    refusing = Drain(window=0.3)
    refusing.begin()
    assert refusing.refusing
    assert refusing.register("reconnect").done()  # slipped past the refusal: ends at once


async def test_regression_an_answer_let_in_just_before_the_refusal_runs_to_the_windows_end() -> (
    None
):
    """A chat answer (``finish``) admitted just before the drain began used to be ended at
    once, right after its headers; it gets what is left of the window, like the others."""
    loop = asyncio.get_running_loop()
    drain = Drain(window=0.4)
    drain.begin()
    began = loop.time()
    answer = drain.register("finish")
    await asyncio.sleep(0.1)
    assert not answer.done()
    await asyncio.wait_for(answer, 2)
    assert 0.35 <= loop.time() - began < 1.5


async def test_regression_gunicorn_repeats_sigterm_to_a_replaced_worker_which_cut_its_drain_short(
    tmp_path: Path, master: Master
) -> None:
    # gunicorn sends SIGTERM again to a worker it replaced (every second past its graceful
    # timeout, and at each later SIGHUP); that used to hand over at once: a gap, streams cut.
    drain = Drain(window=0.2)
    handover = Handover(drain)
    sd = signal_drain(drain, handover, siblings(tmp_path, master))
    new = master.fork()
    sd._on_sigterm(15, None)
    await asyncio.sleep(0.1)
    assert sd._task is not None and not sd._task.done()  # waiting for its replacement
    sd._on_sigterm(15, None)
    sd._on_sigterm(15, None)
    await asyncio.sleep(0.1)
    assert handover.draining_then is None  # not handed over
    siblings(tmp_path, master, me=new).mark("ready")
    await asyncio.wait_for(sd._task, 10)
    assert handover.draining_then is True


async def test_regression_the_drain_logged_with_the_request_id_the_signal_landed_in(
    tmp_path: Path,
) -> None:
    seen: list[str | None] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(request_id_var.get())

    drain = Drain(window=0)
    sd = signal_drain(drain, Handover(drain), None)
    grab = Grab()
    logger = logging.getLogger("sluice.drain")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(grab)
    token = request_id_var.set("some-request")
    try:
        sd._on_sigterm(15, None)  # as if it landed while a request ran
    finally:
        request_id_var.reset(token)
    try:
        await asyncio.sleep(0.05)
        assert sd._task is not None
        await asyncio.wait_for(sd._task, 5)
    finally:
        logger.removeHandler(grab)
        logger.setLevel(level)
    assert seen and set(seen) == {None}
