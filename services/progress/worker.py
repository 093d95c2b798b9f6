"""The job worker of Redis mode: an arq worker running ``execute`` for each queued job.

python -m progress.worker        (reads the same SLUICE_* settings as the service)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from arq import run_worker
from arq.connections import RedisSettings
from prometheus_client import start_http_server
from redis.asyncio import Redis

from progress.kinds import CHECKSUM_FILES, load_checksum_files
from progress.runner import execute
from progress.settings import ProgressSettings
from progress.store import RedisStore
from sluice.logs import configure_logging

QUEUE = "sluice:progress:queue"
log = logging.getLogger("progress.worker")


def store_prefix(settings: ProgressSettings) -> str:
    return f"sluice:{settings.service_name}"


async def run_job(ctx: dict[str, Any], job_id: str, attempt: int) -> None:
    settings: ProgressSettings = ctx["settings"]
    await execute(ctx["store"], job_id, attempt, settings.progress_lease, ctx["service"])


async def startup(ctx: dict[str, Any]) -> None:
    settings = ProgressSettings()
    assert settings.redis_url, "the job worker needs SLUICE_REDIS_URL"
    configure_logging(f"{settings.service_name}-worker", settings.log_level, settings.log_format)
    CHECKSUM_FILES.update(load_checksum_files(settings.progress_checksum_files))
    redis = Redis.from_url(settings.redis_url)
    ctx["settings"] = settings
    ctx["service"] = f"{settings.service_name}-worker"
    ctx["store"] = RedisStore(
        redis, store_prefix(settings), settings.progress_max_events, settings.progress_retention
    )
    if settings.progress_worker_metrics_port:
        start_http_server(settings.progress_worker_metrics_port, addr="127.0.0.1")
    log.info("job worker started", extra={"event": "startup"})


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["store"].redis.aclose()


def redis_settings() -> RedisSettings:
    url = ProgressSettings().redis_url or "redis://127.0.0.1:6379/0"
    return RedisSettings.from_dsn(url)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [run_job]
    on_startup = startup
    on_shutdown = shutdown
    queue_name = QUEUE
    allow_abort_jobs = True
    poll_delay = 0.1
    job_timeout = 7 * 24 * 3600
    max_tries = 3  # a re-run of a lost attempt finds the job moved on and returns
    keep_result = 0
    max_jobs = 100


def main() -> None:
    WorkerSettings.redis_settings = redis_settings()  # type: ignore[attr-defined]
    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
