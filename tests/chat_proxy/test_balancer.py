"""The balancer: two random choices, weighted, the cheaper wins; caps, cooldowns, tiers."""

from __future__ import annotations

import random
from collections import Counter

from sluice_services.chat_proxy.balancer import pick
from sluice_services.chat_proxy.breaker import Breaker
from sluice_services.chat_proxy.endpoints import Endpoint
from sluice_services.chat_proxy.fleet import Deployment
from sluice_services.chat_proxy.upstream import Upstream


def endpoint(
    name: str,
    *,
    weight: float = 1.0,
    max_streams: int | None = None,
    priority: int = 0,
    ttft: float | None = None,
    active: int = 0,
) -> Endpoint:
    deployment = Deployment(
        name=name,
        base_url="http://127.0.0.1:9/v1",
        api_key=None,
        models=None,
        weight=weight,
        max_streams=max_streams,
        priority=priority,
    )
    upstream = Upstream(deployment.base_url, 1.0, 1.0, 8)
    made = Endpoint(deployment, "127.0.0.1", upstream, Breaker(3, 10), "test")
    made.ttft = ttft
    made.active = active
    return made


def spread(endpoints: list[Endpoint], picks: int, seed: int = 7) -> Counter[str]:
    """Streams that never end, picked one after another: who got how many."""
    rng = random.Random(seed)
    got: Counter[str] = Counter()
    for _ in range(picks):
        chosen = pick(endpoints, 0.0, rng=rng)
        assert chosen is not None
        chosen.active += 1
        got[chosen.name] += 1
    return got


def test_equal_endpoints_share_evenly() -> None:
    got = spread([endpoint("a"), endpoint("b"), endpoint("c")], 300)
    assert all(95 <= n <= 105 for n in got.values()), got


def test_a_replica_five_times_slower_to_its_first_token_gets_far_fewer_streams() -> None:
    fast = [endpoint("a", ttft=0.05), endpoint("b", ttft=0.05)]
    got = spread([*fast, endpoint("slow", ttft=0.25)], 330)
    assert got["slow"] < got["a"] / 3, got
    assert got["slow"] > 0  # still used: its figure can improve


def test_weights_share_in_proportion() -> None:
    got = spread([endpoint("big", weight=3), endpoint("small", weight=1)], 400)
    assert 270 <= got["big"] <= 330, got


def test_caps_are_never_passed_and_a_full_fleet_picks_none() -> None:
    endpoints = [endpoint("a", max_streams=2), endpoint("b", max_streams=3)]
    got = spread(endpoints, 5)
    assert got == {"a": 2, "b": 3}
    assert pick(endpoints, 0.0) is None


def test_an_endpoint_in_cooldown_or_retired_or_tried_gets_nothing() -> None:
    a, b, c = endpoint("a"), endpoint("b"), endpoint("c")
    for _ in range(3):
        a.breaker.failure(0.0)
    b.retired = True
    rng = random.Random(1)
    assert {pick([a, b, c], 1.0, rng=rng) for _ in range(50)} == {c}
    assert pick([a, b, c], 1.0, tried=[c]) is None
    assert pick([a, b, c], 11.0, tried=[c]) is a  # its cooldown is over: the probe


def test_a_higher_tier_only_when_the_lower_is_unusable() -> None:
    main = endpoint("main", max_streams=1)
    fallback = endpoint("hosted", priority=1)
    assert pick([main, fallback], 0.0) is main
    main.active = 1  # full
    assert pick([main, fallback], 0.0) is fallback
    assert pick([main], 0.0, tried=[]) is None


def test_a_new_endpoint_is_tried_soon() -> None:
    known = [endpoint("a", ttft=0.05, active=3), endpoint("b", ttft=0.05, active=3)]
    fresh = endpoint("fresh")
    rng = random.Random(3)
    picks = Counter(pick([*known, fresh], 0.0, rng=rng) for _ in range(30))
    assert picks[fresh] >= 15


def test_round_robin_takes_the_usable_ones_in_turn_blind_to_speed() -> None:
    endpoints = [endpoint("a", ttft=0.05), endpoint("b", ttft=0.05), endpoint("slow", ttft=0.25)]
    got = Counter(pick(endpoints, 0.0, turn=n).name for n in range(300))  # type: ignore[union-attr]
    assert got == {"a": 100, "b": 100, "slow": 100}
