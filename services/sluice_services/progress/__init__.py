"""progress: long jobs and their resumable event streams, and the seed's ``/progress``.

Embedded (jobs in-process, one worker) without ``SLUICE_REDIS_URL``; with it, jobs and events
live in Redis and ``progress-worker`` processes run the jobs.
"""

from sluice.registry import Companion, Service

SERVICE = Service(
    name="progress",
    title="Sluice progress",
    app="sluice_services.progress.app:create_app",
    settings="sluice_services.progress.settings:ProgressSettings",
    examples=("/progress",),
    port=8003,
    routes=("/jobs", "/jobs/", "/progress"),
    public_routes=("/progress",),
    uses_redis=True,
    dev_env_redis={"SLUICE_WORKERS": "2"},
    companions=(
        Companion(
            name="progress-worker",
            module="sluice_services.progress.worker",
            metrics_port=8013,
            port_variable="SLUICE_PROGRESS_WORKER_METRICS_PORT",
            container_env={"SLUICE_PROGRESS_WORKER_METRICS_HOST": "0.0.0.0"},
        ),
    ),
)
