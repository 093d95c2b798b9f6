"""progress's own metrics, beside the core's. The job worker exports the job-side ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from sluice.metrics import DURATION_BUCKETS

JOBS_CREATED = Counter("sluice_progress_jobs_created_total", "Jobs accepted.", ["service", "kind"])
JOBS_FINISHED = Counter(
    "sluice_progress_jobs_finished_total",
    "Jobs ended, by final state (succeeded|failed|cancelled).",
    ["service", "kind", "state"],
)
JOBS_LOST = Counter(
    "sluice_progress_jobs_lost_total",
    "Running jobs whose worker stopped heartbeating (then failed or retried).",
    ["service", "kind"],
)
JOB_DURATION = Histogram(
    "sluice_progress_job_duration_seconds",
    "From start to end of a job's run.",
    ["service", "kind"],
    buckets=DURATION_BUCKETS,
)
EVENTS_PUBLISHED = Counter(
    "sluice_progress_events_published_total", "Job events published.", ["service", "kind"]
)
EVENTS_DELIVERED = Counter(
    "sluice_progress_events_delivered_total", "Job events sent to subscribers.", ["service"]
)
DELIVERY_LATENCY = Histogram(
    "sluice_progress_delivery_latency_seconds",
    "From an event's publication to its delivery to a subscriber.",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
SUBSCRIBERS = Gauge(
    "sluice_progress_subscribers",
    "Event subscribers now.",
    ["service"],
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    "sluice_progress_queue_depth",
    "Jobs waiting for a worker.",
    ["service"],
    multiprocess_mode="mostrecent",
)
