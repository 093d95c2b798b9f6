"""Prometheus metrics, multiprocess-safe under gunicorn.

``PROMETHEUS_MULTIPROC_DIR`` must be set before this module is imported (the gunicorn
config does it, and wipes the folder at start); then every worker writes its own files
and ``/metrics`` on any worker reports the sum. Gauges use ``livesum`` so a dead
worker's streams vanish from ``sluice_streams_active``. Labels are bounded: service
names, route templates, fixed reason sets; never raw paths or key material.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client import values as _values

_pid = os.getpid()


def _process_id() -> int:
    return _pid


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Every process that writes metrics needs the folder, not only gunicorn's (whose
    # on_starting wipes it): the job worker, a one-off `python -m`, a fresh container.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    # Every multiprocess write asks for the pid, to notice a fork: a getpid() system call
    # per counter increment. The pid is kept here instead and refreshed in a forked child.
    # Set before any metric has a value (values are made per label set, at first use).
    os.register_at_fork(after_in_child=_after_fork)
    _values.ValueClass = _values.MultiProcessValue(process_identifier=_process_id)  # type: ignore[no-untyped-call]

# From 5 ms to an hour: streams live from a blink to a long-running follow.
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
# Time to first byte / token: milliseconds matter.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

STREAMS_ACTIVE = Gauge(
    "sluice_streams_active",
    "Streams open right now.",
    ["service", "route"],
    multiprocess_mode="livesum",
)
STREAMS_STARTED = Counter("sluice_streams_started_total", "Streams started.", ["service", "route"])
STREAMS_ENDED = Counter(
    "sluice_streams_ended_total",
    "Streams ended, by reason (completed|client_disconnect|send_timeout|error|drain).",
    ["service", "route", "reason"],
)
STREAM_DURATION = Histogram(
    "sluice_stream_duration_seconds",
    "Stream duration from headers to close.",
    ["service", "route"],
    buckets=DURATION_BUCKETS,
)
TIME_TO_FIRST_BYTE = Histogram(
    "sluice_time_to_first_byte_seconds",
    "From request arrival to the first body byte of a stream.",
    ["service", "route"],
    buckets=LATENCY_BUCKETS,
)
STREAM_EVENTS = Counter(
    "sluice_stream_events_total", "Events/chunks sent on streams.", ["service", "route"]
)
RATE_LIMITED = Counter(
    "sluice_rate_limited_total",
    "Requests refused by a rate limit or stream cap.",
    ["service", "route", "limit"],
)
AUTH_FAILURES = Counter(
    "sluice_auth_failures_total", "Requests refused by auth, by reason.", ["service", "reason"]
)
DRAINS = Counter(
    "sluice_drains_total",
    "Worker drains on SIGTERM, by result (clean: every stream ended in the window; timeout).",
    ["service", "result"],
)
HTTP_REQUESTS = Counter(
    "sluice_http_requests_total",
    "HTTP requests by status.",
    ["service", "method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "sluice_http_request_duration_seconds",
    "HTTP request duration, streams included (to their end).",
    ["service", "method", "route"],
    buckets=DURATION_BUCKETS,
)


def collected() -> CollectorRegistry:
    """What ``/metrics`` reports: this process's registry, or in multiprocess mode a registry
    that sums every worker's files when collected."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The exposition body and its content type, summed over workers in multiprocess mode."""
    return generate_latest(collected()), CONTENT_TYPE_LATEST


class _RouteMetrics:
    """The labelled children of one route, looked up once (``labels()`` is not free)."""

    __slots__ = ("active", "duration", "ended", "events", "service", "started", "ttfb")

    def __init__(self, service: str, route: str) -> None:
        self.service = service
        self.started = STREAMS_STARTED.labels(service, route)
        self.active = STREAMS_ACTIVE.labels(service, route)
        self.duration = STREAM_DURATION.labels(service, route)
        self.ttfb = TIME_TO_FIRST_BYTE.labels(service, route)
        self.events = STREAM_EVENTS.labels(service, route)
        self.ended: dict[str, Any] = {}


class StreamMetrics:
    """The stream observer the core reports to."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._routes: dict[str, _RouteMetrics] = {}
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _route(self, route: str) -> _RouteMetrics:
        metrics = self._routes.get(route)
        if metrics is None:
            metrics = self._routes[route] = _RouteMetrics(self.service, route)
        return metrics

    def stream_started(self, route: str) -> None:
        metrics = self._route(route)
        metrics.started.inc()
        metrics.active.inc()

    def stream_ended(
        self, route: str, reason: str, duration: float, events: int, ttfb: float | None
    ) -> None:
        metrics = self._route(route)
        metrics.active.dec()
        ended = metrics.ended.get(reason)
        if ended is None:
            ended = metrics.ended[reason] = STREAMS_ENDED.labels(self.service, route, reason)
        ended.inc()
        metrics.duration.observe(duration)
        if events:
            metrics.events.inc(events)
        if ttfb is not None:
            metrics.ttfb.observe(ttfb)

    def request_done(self, method: str, route: str, status: int, duration: float) -> None:
        key = (method, route, status)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (
                HTTP_REQUESTS.labels(self.service, method, route, str(status)),
                HTTP_DURATION.labels(self.service, method, route),
            )
        children[0].inc()
        children[1].observe(duration)
