"""Which endpoint a new request goes to: the power of two choices, weighted, with a
penalty for a slow first token.

Two usable endpoints are drawn at random (in proportion to their deployments' weights)
and the one whose next request costs less gets it: ``(active + 1) x TTFT moving average /
weight``. Drawing two and keeping the better one spreads load almost as well as asking
every endpoint, without the herd that "always the least loaded" sends to one endpoint
whose numbers are a moment old (every worker decides on its own). A replica 5x slower to
its first token takes about a fifth of the load of its peers at the same weight.

Tiers: a deployment's ``priority`` (lower first). A higher tier (a hosted fallback) gets a
request only when no endpoint of the lower tiers is usable (full, cooling down or tried).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from sluice_services.chat_proxy.endpoints import TTFT_FLOOR, Endpoint


def pick(
    candidates: Sequence[Endpoint],
    now: float,
    tried: Collection[Endpoint] = (),
    rng: random.Random | None = None,
    turn: int | None = None,
) -> Endpoint | None:
    """The endpoint for a new request, or None when none is usable now. With ``turn``
    (``routing.balance: round_robin``): the usable ones in turn, blind to load and speed."""
    usable = [e for e in candidates if e not in tried and e.usable(now)]
    if not usable:
        return None
    tier = min(e.deployment.priority for e in usable)
    usable = [e for e in usable if e.deployment.priority == tier]
    if len(usable) == 1:
        return usable[0]
    if turn is not None:
        return usable[turn % len(usable)]
    draw = rng or random
    weights = [e.deployment.weight for e in usable]
    first = draw.choices(range(len(usable)), weights)[0]
    rest = weights.copy()
    rest[first] = 0.0
    second = draw.choices(range(len(usable)), rest)[0]
    a, b = usable[first], usable[second]
    known = [e.ttft for e in usable if e.ttft is not None]
    # An endpoint with no first token yet is taken as fast as the fastest known one: it is
    # tried soon, and learns its own figure.
    floor = min(known) if known else TTFT_FLOOR
    return a if a.cost(floor) <= b.cost(floor) else b
