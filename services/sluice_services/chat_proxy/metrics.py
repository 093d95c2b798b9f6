"""chat-proxy's own metrics, beside the core's. ``model`` is bounded (see KnownModels)."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from sluice.metrics import LATENCY_BUCKETS

TTFT_METRIC = "sluice_chat_time_to_first_token_seconds"
TIME_TO_FIRST_TOKEN = Histogram(
    TTFT_METRIC,
    "From request arrival to the first content token sent.",
    ["service", "model"],
    buckets=LATENCY_BUCKETS,
)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
INTER_TOKEN = Histogram(
    "sluice_chat_inter_token_latency_seconds",
    "Between consecutive content tokens of a stream.",
    ["service", "model"],
    buckets=ITL_BUCKETS,
)
TOKENS = Counter(
    "sluice_chat_tokens_total", "Tokens by kind (prompt|completion).", ["service", "model", "kind"]
)
# ``upstream``: a deployment's name in the fleet file ("default" for SLUICE_UPSTREAM_BASE_URL).
UPSTREAM_REQUESTS = Counter(
    "sluice_upstream_requests_total",
    "Upstream responses by HTTP status.",
    ["service", "upstream", "status"],
)
UPSTREAM_ERRORS = Counter(
    "sluice_upstream_errors_total",
    "Upstream failures by kind (connect|timeout|reset|status|error_event|protocol|too_large).",
    ["service", "upstream", "kind"],
)
STREAMS_ACTIVE = Gauge(
    "sluice_upstream_streams_active",
    "Requests open to a deployment (streams and not).",
    ["service", "upstream"],
    multiprocess_mode="livesum",
)
FAILOVERS = Counter(
    "sluice_upstream_failovers_total",
    "Attempts that failed before the first byte and went on to another try, by reason.",
    ["service", "upstream", "reason"],
)
COOLDOWNS = Counter(
    "sluice_upstream_cooldowns_total",
    "Times an endpoint of a deployment was put in cooldown (circuit breaker opened).",
    ["service", "upstream"],
)
COOLDOWN = Gauge(
    "sluice_upstream_in_cooldown",
    "1 while an endpoint of a deployment is in cooldown (any live worker).",
    ["service", "upstream"],
    multiprocess_mode="livemax",
)
ENDPOINTS = Gauge(
    "sluice_upstream_endpoints",
    "Addresses a deployment's host resolved to.",
    ["service", "upstream"],
    multiprocess_mode="livemax",
)
UPSTREAM_TTFT = Histogram(
    "sluice_upstream_time_to_first_token_seconds",
    "From sending an attempt to a deployment to its first token.",
    ["service", "upstream"],
    buckets=LATENCY_BUCKETS,
)


class KnownModels:
    """Model names allowed as label values: configured ones and the upstream's list."""

    LIMIT = 200

    def __init__(self, configured: str) -> None:
        self.names = {m.strip() for m in configured.split(",") if m.strip()}

    def add(self, names: list[str]) -> None:
        for name in names:
            if len(self.names) >= self.LIMIT:
                return
            self.names.add(name)

    def label(self, model: str) -> str:
        return model if model in self.names else "other"


class StreamHistogram:
    """One stream's observations of a histogram, added to the shared one when it ends.

    In multiprocess mode every ``observe`` writes two memory-mapped values under a lock;
    per token that is a large share of a proxy's CPU. Counting in a list and adding the
    counts once gives the same exposition. (It uses the child's bucket values directly:
    tests/chat_proxy/test_metrics.py checks it against ``observe`` for this version.)
    """

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any, bounds: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        if not any(self._counts):
            return
        for bucket, count in zip(self._child._buckets, self._counts, strict=True):
            if count:
                bucket.inc(count)
        self._child._sum.inc(self._sum)
        self._counts = [0] * len(self._counts)
        self._sum = 0.0


# Resumable answers (chat_proxy/resumable.py).
RESUMES = Counter(
    "sluice_chat_resumes_total",
    "Reads of a resumable answer by its resume path (GET /v1/chat/completions/{id}/events).",
    ["service"],
)
ANSWERS_UNREAD = Gauge(
    "sluice_chat_answers_unread",
    "Resumable answers still generating with no reader anywhere (as their writers last saw).",
    ["service"],
    multiprocess_mode="livesum",
)
ANSWER_BYTES = Gauge(
    "sluice_chat_answer_bytes",
    "Bytes of resumable answers kept in the store (Redis, or memory), until their retention "
    "ends, as counted by the workers that wrote them.",
    ["service"],
    multiprocess_mode="livesum",
)
