"""Token budgets per key, in the core's limiter storage (memory, or Redis across replicas).

A fixed window charged after each completion with its real token count; a key over its
budget is refused (429) until the window turns.
"""

from __future__ import annotations

import time

from limits import parse
from limits.strategies import FixedWindowRateLimiter

from sluice.errors import ApiError
from sluice.runtime import Runtime
from sluice.settings import CoreSettings


class TokenBudget:
    def __init__(self, runtime: Runtime[CoreSettings], limit: str) -> None:
        self.item = parse(limit)
        self.strategy = FixedWindowRateLimiter(runtime.rates.storage)
        self.namespace = f"sluice:{runtime.settings.service_name}:tokens"

    def check(self, caller: str) -> None:
        if self.strategy.test(self.item, self.namespace, caller):
            return
        reset, _ = self.strategy.get_window_stats(self.item, self.namespace, caller)
        retry = max(1, int(reset - time.time()) + 1)
        raise ApiError(
            429,
            "tokens_exceeded",
            f"token budget of {self.item.amount} per {self.item.multiples} "
            f"{self.item.GRANULARITY.name} used up; retry in {retry} s",
            headers={"Retry-After": str(retry)},
            fields={"param": None, "code": "tokens_exceeded"},
        )

    def charge(self, caller: str, tokens: int) -> None:
        if tokens > 0:
            self.strategy.hit(self.item, self.namespace, caller, cost=tokens)
