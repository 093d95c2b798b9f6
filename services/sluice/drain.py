"""Graceful drain: on SIGTERM, end every open stream with a reconnect hint, spread over a window.

uvicorn (and so gunicorn's uvicorn worker) never tells a running response that the
server is stopping: it waits for responses to finish, and endless streams never do.
So the core takes SIGTERM first: it flips readiness to 503, refuses new streams, gives
each open stream a random moment in ``[0, window]`` to send its reconnect hint and
close (so clients do not all come back at once), and only when the streams are gone
(or the window plus a margin has passed) hands the signal to uvicorn to stop.

In a rolling restart (gunicorn's SIGHUP: new workers forked, old ones told to stop at
once) a worker whose replacements are still booting first serves on until they are
ready (``handoff.py``). Then it hands the signal over at the start of its drain, not the
end: uvicorn stops accepting, so new connections go to the replacements, and closes idle
keep-alive connections, while the open streams still end over the window as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal

from sluice.handoff import Siblings
from sluice.metrics import DRAINS

log = logging.getLogger("sluice.drain")

DrainPolicy = Literal["reconnect", "finish"]
LAME_DUCK_SECONDS = 1.0  # a replaced worker's responses close their connections this long
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class Drain:
    """The set of open streams of one worker and the drain state."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.draining = False  # readiness says 503
        self.refusing = False  # new streams are refused (503 + Retry-After)
        self._ends_at = 0.0
        self._streams: dict[asyncio.Future[None], DrainPolicy] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def register(self, policy: DrainPolicy = "reconnect") -> asyncio.Future[None]:
        """A future that resolves when this stream must end for the drain.

        ``reconnect`` streams (resumable: SSE with ids, endless feeds) end at a random
        moment in the window; ``finish`` streams (an LLM answer cannot be resumed) may run
        on until the window's end.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._streams[future] = policy
        self._empty.clear()
        if self.refusing and policy == "reconnect":  # past the refusal just before the drain
            future.set_result(None)  # began: it reconnects at once, to a worker that serves
        elif self.draining:  # let in after a hand-over, or an answer that cannot resume: in
            # what is left of the window (cut at its start, an LLM answer would be lost whole)
            self._schedule(loop, future, policy, max(0.0, self._ends_at - loop.time()))
        return future

    def unregister(self, future: asyncio.Future[None]) -> None:
        self._streams.pop(future, None)
        if not future.done():
            future.cancel()
        if not self._streams:
            self._empty.set()

    def begin(self, refuse: bool = True) -> None:
        """Start draining: each open stream gets a random moment within the window.

        ``refuse``: new streams are refused from now on. A worker whose replacement already
        serves stops accepting connections instead (see ``SignalDrain``), and a stream that
        still arrives on a connection it had is served, then drained like the others.
        """
        if self.draining:
            return
        self.draining = True
        self.refusing = refuse
        loop = asyncio.get_running_loop()
        self._ends_at = loop.time() + self.window
        log.info(
            "drain started",
            extra={"event": "drain", "open_streams": len(self._streams), "window_s": self.window},
        )
        for future, policy in list(self._streams.items()):
            self._schedule(loop, future, policy, self.window)

    @staticmethod
    def _schedule(
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[None],
        policy: DrainPolicy,
        window: float,
    ) -> None:
        delay = window if policy == "finish" else random.uniform(0, window)
        loop.call_later(delay, _resolve, future)

    async def wait_empty(self, timeout: float) -> bool:
        """True when every stream ended within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SignalDrain:
    """Puts :class:`Drain` in front of the server's own SIGTERM handler while the app runs."""

    def __init__(
        self,
        drain: Drain,
        service: str,
        margin: float = 2.0,
        siblings: Siblings | None = None,
        handoff_timeout: float = 30.0,
    ) -> None:
        self.drain = drain
        self.service = service
        self.margin = margin
        self.siblings = siblings
        self.handoff_timeout = handoff_timeout
        self._previous: _SignalHandler = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        try:
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread (e.g. an in-process test server)
            return
        self._loop = asyncio.get_running_loop()

    def uninstall(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, self._previous)
        self._loop = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._loop is None:
            self._hand_over(signum, frame)
            return
        if self._task is not None:
            # Already under way, and bounded. gunicorn sends SIGTERM again to a worker it
            # replaced (every second past its graceful timeout, and at each later SIGHUP):
            # that is no reason to cut the drain short. SIGINT twice (uvicorn's force exit)
            # stops at once.
            return
        # In a context of its own: the signal lands in whatever request is running, and the
        # drain's log lines are not that request's.
        self._loop.call_soon_threadsafe(self._start, signum, frame, context=contextvars.Context())

    def _start(self, signum: int, frame: FrameType | None) -> None:
        if self._task is not None:  # two signals before the first was handled
            return
        self._task = asyncio.get_running_loop().create_task(self._run(signum, frame))

    async def _run(self, signum: int, frame: FrameType | None) -> None:
        replaced = False
        if self.siblings is not None:
            self.siblings.mark("leaving")  # no sibling waits for this one to serve
            replacements = self.siblings.booting()
            if replacements:
                log.info(
                    "serving until replaced",
                    extra={"event": "handoff", "replacements": sorted(replacements)},
                )
                replaced = await self.siblings.wait_replaced(self.handoff_timeout)
        if replaced:
            # Nothing is refused: every response now closes its connection, so the proxy
            # in front drops its connections to this worker itself; after a moment of that
            # uvicorn stops accepting (the replacements take every new connection) and
            # closes the idle ones left. A stream let in meanwhile is drained with the rest.
            self.drain.begin(refuse=False)
            await asyncio.sleep(min(LAME_DUCK_SECONDS, self.drain.window))
            self._hand_over(signum, frame)
        else:
            self.drain.begin()
        clean = await self.drain.wait_empty(self.drain.window + self.margin)
        DRAINS.labels(self.service, "clean" if clean else "timeout").inc()
        log.info(
            "drain finished",
            extra={
                "event": "drain",
                "clean": clean,
                "open_streams": self.drain.open_streams,
                "handed_over_at_start": replaced,
            },
        )
        if not replaced:
            self._hand_over(signum, frame)

    async def finished(self, timeout: float) -> None:
        """Wait (bounded) for a drain under way to log and count its end."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)

    def _hand_over(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous
        self.uninstall()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)
