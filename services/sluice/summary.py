"""A service's streams right now and how they ended, read from its own metrics.

``GET /_sluice/streams`` answers this JSON (a key is needed, as for any route; nginx routes
it per service as ``/_sluice/streams/<service>``). It is what the console's Streams page reads
where no Prometheus is at hand: the same counters ``/metrics`` exports, summed over the
service's workers, cut to what a person watching needs.

Counters are totals since the service started (a restart sets them back to zero) and
histograms are cumulative buckets: a reader takes the difference of two summaries for what
happened between them, as Prometheus's ``rate()`` and ``histogram_quantile()`` do. Each
replica answers for itself only; across replicas, Prometheus is the source.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from sluice.metrics import collected


@dataclass
class Buckets:
    """One histogram, summed over the label sets it is read from."""

    by_le: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    sum: float = 0.0

    def add(self, suffix: str, labels: Mapping[str, str], value: float) -> None:
        if suffix == "_bucket":
            le = float(labels["le"])
            self.by_le[le] = self.by_le.get(le, 0.0) + value
        elif suffix == "_count":
            self.count += value
        elif suffix == "_sum":
            self.sum += value

    def as_json(self) -> dict[str, Any]:
        """``le`` the finite upper bounds; ``counts`` cumulative, one more (``+Inf``) at
        the end, which is ``count``."""
        bounds = sorted(le for le in self.by_le if not math.isinf(le))
        counts = [self.by_le[le] for le in bounds]
        return {"le": bounds, "counts": [*counts, self.count], "count": self.count, "sum": self.sum}


@dataclass
class RouteSummary:
    route: str
    active: float = 0.0
    started: float = 0.0
    ended: dict[str, float] = field(default_factory=dict)
    refused: dict[str, float] = field(default_factory=dict)
    ttfb: Buckets = field(default_factory=Buckets)

    def streams(self) -> bool:
        """A streaming route: it started one, or a stream cap refused one (a rate limit on a
        JSON route alone is not a stream route's)."""
        capped = any(limit.startswith("streams_") for limit in self.refused)
        return bool(self.started or self.active or self.ended or capped)

    def as_json(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "active": self.active,
            "started": self.started,
            "ended": dict(sorted(self.ended.items())),
            "refused": dict(sorted(self.refused.items())),
            "ttfb": self.ttfb.as_json(),
        }


# Which replica answered (its host name: a pod's, a container's): behind a load balancer,
# successive summaries may come from different ones, and only one's may be compared.
INSTANCE = socket.gethostname()
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
TTFB = "sluice_time_to_first_byte_seconds"


def _split(name: str, families: Iterable[str]) -> tuple[str, str] | None:
    for family in families:
        if name.startswith(family):
            suffix = name[len(family) :]
            if suffix in _HISTOGRAM_SUFFIXES:
                return family, suffix
    return None


def summary(
    service: str,
    latencies: Mapping[str, str] | None = None,
    registry: CollectorRegistry | None = None,
) -> dict[str, Any]:
    """``service``'s summary from ``registry`` (default: what ``/metrics`` reports).

    ``latencies``: more histograms to report for the whole service, by a short name (for
    instance a time to first token): ``{"ttft": "sluice_..._seconds"}``, summed over their
    labels other than ``service``.
    """
    latencies = latencies or {}
    wanted = {metric: name for name, metric in latencies.items()}
    routes: dict[str, RouteSummary] = {}
    auth_failures: dict[str, float] = {}
    extra = {name: Buckets() for name in latencies}
    histograms = (TTFB, *wanted)

    def route(labels: Mapping[str, str]) -> RouteSummary:
        name = labels.get("route", "")
        found = routes.get(name)
        if found is None:
            found = routes[name] = RouteSummary(name)
        return found

    for family in (registry or collected()).collect():
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service") != service:
                continue
            name, value = sample.name, sample.value
            if name == "sluice_streams_active":
                route(labels).active += value
            elif name == "sluice_streams_started_total":
                route(labels).started += value
            elif name == "sluice_streams_ended_total":
                ended = route(labels).ended
                ended[labels["reason"]] = ended.get(labels["reason"], 0.0) + value
            elif name == "sluice_rate_limited_total":
                refused = route(labels).refused
                refused[labels["limit"]] = refused.get(labels["limit"], 0.0) + value
            elif name == "sluice_auth_failures_total":
                auth_failures[labels["reason"]] = auth_failures.get(labels["reason"], 0.0) + value
            elif (split := _split(name, histograms)) is not None:
                metric, suffix = split
                buckets = route(labels).ttfb if metric == TTFB else extra[wanted[metric]]
                buckets.add(suffix, labels, value)
    return {
        "service": service,
        "source": "service",
        "at": time.time(),
        "instance": INSTANCE,
        "routes": [routes[name].as_json() for name in sorted(routes) if routes[name].streams()],
        "auth_failures": dict(sorted(auth_failures.items())),
        "latencies": {name: buckets.as_json() for name, buckets in sorted(extra.items())},
    }
