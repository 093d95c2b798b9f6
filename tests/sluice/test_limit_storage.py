"""The in-process limits storage: same answers as limits' own, no threads, bounded."""

from __future__ import annotations

import threading

import pytest
from limits import parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from sluice import limit_storage
from sluice.limit_storage import LoopMemoryStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("time.time", clock)
    return clock


def test_scheme_is_registered_with_limits() -> None:
    assert isinstance(storage_from_string("sluice-memory://"), LoopMemoryStorage)


@pytest.mark.parametrize("strategy", [MovingWindowRateLimiter, FixedWindowRateLimiter])
def test_same_answers_as_limits_memory_storage(strategy: type, clock: Clock) -> None:
    ours: Storage = LoopMemoryStorage()
    theirs: Storage = MemoryStorage()
    item = parse("5/second")
    a, b = strategy(ours), strategy(theirs)
    for step in range(60):
        clock.now += 0.13 * (step % 4)  # bursts and gaps, across many windows
        cost = 1 + step % 3
        assert a.hit(item, "k", cost=cost) == b.hit(item, "k", cost=cost), step
        assert a.test(item, "k") == b.test(item, "k"), step
        stats_a, stats_b = a.get_window_stats(item, "k"), b.get_window_stats(item, "k")
        assert stats_a.remaining == stats_b.remaining, step
        assert stats_a.reset_time == pytest.approx(stats_b.reset_time), step
    theirs.reset()


def test_moving_window_refuses_over_the_limit_and_frees_as_hits_age(clock: Clock) -> None:
    limiter = MovingWindowRateLimiter(LoopMemoryStorage())
    item = parse("3/minute")
    assert all(limiter.hit(item, "k") for _ in range(3))
    assert not limiter.hit(item, "k")
    assert limiter.hit(item, "other")  # keys are separate
    clock.now += 59
    assert not limiter.hit(item, "k")
    clock.now += 1.5
    assert limiter.hit(item, "k")
    assert limiter.get_window_stats(item, "k").remaining == 2  # the first three aged out


def test_idle_keys_are_swept(clock: Clock) -> None:
    storage = LoopMemoryStorage()
    moving, fixed = MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)
    item = parse("10/second")
    for n in range(1000):
        moving.hit(item, f"m{n}")
        fixed.hit(item, f"f{n}")
    assert storage.keys() == 2000
    clock.now += limit_storage.SWEEP_SECONDS + 1
    moving.hit(item, "fresh")  # the first call after the sweep is due runs it
    assert storage.keys() == 1


def test_no_threads_are_started(clock: Clock) -> None:
    before = threading.active_count()
    limiter = MovingWindowRateLimiter(LoopMemoryStorage())
    item = parse("1000/second")
    for _ in range(200):
        clock.now += 0.02
        limiter.hit(item, "k")
    assert threading.active_count() == before
