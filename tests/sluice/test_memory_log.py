"""sluice.memory_log: replay then live, in order, once; the final item ends readers; a bound
drops the oldest; a dropped log's readers get what it held, then stop."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest

from sluice.memory_log import MemoryLog

pytestmark = pytest.mark.anyio


T = TypeVar("T")


async def take(log: MemoryLog[T], key: str, after: int) -> list[tuple[int, T]]:
    return [item async for item in log.read(key, after)]


async def test_readers_get_the_replay_then_every_new_item_once_in_order() -> None:
    log: MemoryLog[str] = MemoryLog()
    log.open("a")
    for n in range(1, 6):
        assert log.append("a", f"item {n}") == n
    readers = [
        asyncio.ensure_future(take(log, "a", after)) for after in (0, 2, 5) for _ in range(5)
    ]
    await asyncio.sleep(0.01)
    assert log.readers == 15
    for n in range(6, 101):
        log.append("a", f"item {n}", final=n == 100)
        if n % 10 == 0:
            await asyncio.sleep(0)
    got = await asyncio.wait_for(asyncio.gather(*readers), 5)
    for index, items in enumerate(got):
        first = (0, 2, 5)[index // 5] + 1
        assert items == [(n, f"item {n}") for n in range(first, 101)]
    assert log.readers == 0
    assert log.append("a", "after the end") == 0  # an ended log takes nothing more
    assert log.last("a") == 100
    assert await take(log, "a", 100) == []  # a reader with everything stops at once


async def test_a_bound_keeps_the_newest_and_a_reader_behind_skips_the_dropped() -> None:
    log: MemoryLog[int] = MemoryLog(max_items=10)
    log.open("k")
    for n in range(1, 31):
        log.append("k", n, final=n == 30)
    assert await take(log, "k", 0) == [(n, n) for n in range(21, 31)]
    assert await take(log, "k", 25) == [(n, n) for n in range(26, 31)]


async def test_a_dropped_log_ends_its_readers_after_what_it_held() -> None:
    log: MemoryLog[str] = MemoryLog()
    log.open("x")
    log.append("x", "one")
    reader = asyncio.ensure_future(take(log, "x", 0))
    await asyncio.sleep(0.01)
    log.append("x", "two")
    log.drop("x")
    assert await asyncio.wait_for(reader, 1) == [(1, "one"), (2, "two")]
    assert "x" not in log and log.last("x") == 0
    assert log.append("x", "three") == 0
    assert await take(log, "x", 0) == []  # no such log: nothing, at once
