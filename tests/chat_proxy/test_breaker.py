"""The circuit breaker: out after failures in a row, one probe after the cooldown."""

from __future__ import annotations

from sluice_services.chat_proxy.breaker import MAX_FACTOR, MAX_RETRY_AFTER, Breaker, State


def test_failures_in_a_row_open_it_and_a_success_between_resets_the_count() -> None:
    breaker = Breaker(failures=3, cooldown=10)
    assert not breaker.failure(0) and not breaker.failure(0)
    breaker.success()
    assert not breaker.failure(0) and not breaker.failure(0)
    assert breaker.available(0)
    assert breaker.failure(1)  # the third in a row
    assert breaker.state is State.OPEN and breaker.until == 11
    assert not breaker.available(5) and breaker.cooling(5)


def test_after_the_cooldown_exactly_one_probe_goes_out() -> None:
    breaker = Breaker(failures=1, cooldown=10)
    breaker.failure(0)
    assert not breaker.available(9.9)
    assert breaker.available(10)
    breaker.begin(10)
    assert breaker.state is State.HALF_OPEN
    assert not breaker.available(10.1)  # the probe is out: nobody else
    assert breaker.cooling(10.1)
    breaker.success()
    assert breaker.available(10.2) and not breaker.cooling(10.2)


def test_a_failed_probe_doubles_the_cooldown_up_to_its_bound() -> None:
    breaker = Breaker(failures=1, cooldown=10)
    breaker.failure(0)
    now = 0.0
    cooldowns = []
    for _ in range(8):
        now = breaker.until
        breaker.begin(now)
        assert breaker.failure(now)
        cooldowns.append(breaker.until - now)
    assert cooldowns[:3] == [20, 40, 80]
    assert max(cooldowns) == 10 * MAX_FACTOR
    breaker.begin(breaker.until)
    breaker.success()  # recovered: the next outage starts from the first cooldown again
    breaker.failure(1000)
    assert breaker.until == 1010


def test_a_probe_with_no_verdict_lets_another_probe() -> None:
    breaker = Breaker(failures=1, cooldown=10)
    breaker.failure(0)
    breaker.begin(10)
    assert not breaker.available(10)
    breaker.abandon()  # the client left before the probe's first token
    assert breaker.available(10)


def test_retry_after_is_the_cooldown_at_once_and_bounded() -> None:
    breaker = Breaker(failures=5, cooldown=10)
    assert breaker.retry_after(0, 2.5)
    assert breaker.until == 2.5 and not breaker.available(2)
    assert breaker.available(2.5)
    hostile = Breaker(failures=5, cooldown=10)
    hostile.retry_after(0, 10**9)  # a server that says "come back in 30 years"
    assert hostile.until == MAX_RETRY_AFTER
    negative = Breaker(failures=5, cooldown=10)
    negative.retry_after(0, -5)
    assert negative.available(0)
