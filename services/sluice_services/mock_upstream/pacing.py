"""Where in an answer its faults strike, and how fast its tokens come: one place for every
API, so ``stall_after=3`` means the same in a chat stream and a Responses stream.

A stream asks :meth:`Pacer.before` before each token; a non-streamed answer waits
:func:`answer_time` in one sleep. Both raise :class:`MidAnswerFailure` where
``error_after`` says, so each API can end with its own error shape.
"""

from __future__ import annotations

import asyncio

from sluice.streaming import StreamError
from sluice_services.mock_upstream.faults import Faults
from sluice_services.mock_upstream.ledger import Entry


class MidAnswerFailure(Exception):
    """``error_after``: the answer fails here (a stream with its API's error event)."""


class Pacer:
    """The per-token schedule of one stream; ``before`` is awaited once a token, so it does
    no more than a few comparisons when no fault is set."""

    __slots__ = ("delay", "entry", "faults")

    def __init__(self, faults: Faults, delay: float, entry: Entry) -> None:
        self.faults = faults
        self.delay = delay
        self.entry = entry

    async def prefill(self) -> None:
        """Before the first byte of the body: ``first_token_delay``."""
        if self.faults.first_token_delay:
            await asyncio.sleep(self.faults.first_token_delay)

    async def before(self, i: int) -> None:
        """Before token ``i`` (0-based): a stall, the failure, the reset, or the delay."""
        faults = self.faults
        if faults.stall and i == faults.stall_after:
            await asyncio.sleep(faults.stall)
        if faults.error_after is not None and i == faults.error_after:
            raise MidAnswerFailure
        if faults.reset_after is not None and i == faults.reset_after:
            self.entry.end = "reset"
            raise StreamError("mock upstream reset the connection", abort=True)
        if i and self.delay:
            await asyncio.sleep(self.delay)


async def answer_time(faults: Faults, count: int, delay: float) -> None:
    """A non-streamed answer of ``count`` tokens takes what its stream would: the prefill,
    a stall within it, each token's delay; cut short by ``error_after`` (then raises)."""
    wait = faults.first_token_delay
    if faults.stall and faults.stall_after < count:
        wait += faults.stall
    failing = faults.error_after is not None and faults.error_after < count
    made = faults.error_after if failing and faults.error_after is not None else count
    wait += delay * made
    if wait:
        await asyncio.sleep(wait)
    if failing:
        raise MidAnswerFailure
