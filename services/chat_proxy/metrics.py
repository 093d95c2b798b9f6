"""chat-proxy's own metrics, beside the core's. ``model`` is bounded (see KnownModels)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from sluice.metrics import LATENCY_BUCKETS

TIME_TO_FIRST_TOKEN = Histogram(
    "sluice_chat_time_to_first_token_seconds",
    "From request arrival to the first content token sent.",
    ["service", "model"],
    buckets=LATENCY_BUCKETS,
)
INTER_TOKEN = Histogram(
    "sluice_chat_inter_token_latency_seconds",
    "Between consecutive content tokens of a stream.",
    ["service", "model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TOKENS = Counter(
    "sluice_chat_tokens_total", "Tokens by kind (prompt|completion).", ["service", "model", "kind"]
)
UPSTREAM_REQUESTS = Counter(
    "sluice_upstream_requests_total", "Upstream responses by HTTP status.", ["service", "status"]
)
UPSTREAM_ERRORS = Counter(
    "sluice_upstream_errors_total",
    "Upstream failures by kind (connect|timeout|reset|status|error_event|protocol).",
    ["service", "kind"],
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
