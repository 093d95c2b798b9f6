"""Graceful drain: on SIGTERM, end every open stream with a reconnect hint, spread over a window.

uvicorn (and so gunicorn's uvicorn worker) never tells a running response that the
server is stopping: it waits for responses to finish, and endless streams never do.
So the core takes SIGTERM first: it flips readiness to 503, refuses new streams, gives
each open stream a random moment in ``[0, window]`` to send its reconnect hint and
close (so clients do not all come back at once), and only when the streams are gone
(or the window plus a margin has passed) hands the signal to uvicorn to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal

from sluice.metrics import DRAINS

log = logging.getLogger("sluice.drain")

DrainPolicy = Literal["reconnect", "finish"]
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class Drain:
    """The set of open streams of one worker and the drain state."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.draining = False
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
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._streams[future] = policy
        self._empty.clear()
        if self.draining:
            future.set_result(None)
        return future

    def unregister(self, future: asyncio.Future[None]) -> None:
        self._streams.pop(future, None)
        if not future.done():
            future.cancel()
        if not self._streams:
            self._empty.set()

    def begin(self) -> None:
        """Start draining: each open stream gets a random moment within the window."""
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        log.info(
            "drain started",
            extra={"event": "drain", "open_streams": len(self._streams), "window_s": self.window},
        )
        for future, policy in list(self._streams.items()):
            delay = self.window if policy == "finish" else random.uniform(0, self.window)
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

    def __init__(self, drain: Drain, service: str, margin: float = 2.0) -> None:
        self.drain = drain
        self.service = service
        self.margin = margin
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
        if self._loop is None or self._task is not None:
            # A second SIGTERM while draining: stop now.
            self._hand_over(signum, frame)
            return
        self._loop.call_soon_threadsafe(self._start, signum, frame)

    def _start(self, signum: int, frame: FrameType | None) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(signum, frame))

    async def _run(self, signum: int, frame: FrameType | None) -> None:
        self.drain.begin()
        clean = await self.drain.wait_empty(self.drain.window + self.margin)
        DRAINS.labels(self.service, "clean" if clean else "timeout").inc()
        log.info(
            "drain finished",
            extra={"event": "drain", "clean": clean, "open_streams": self.drain.open_streams},
        )
        self._hand_over(signum, frame)

    def _hand_over(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous
        self.uninstall()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)
