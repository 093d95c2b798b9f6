"""The job worker of Redis mode: an arq worker running ``execute`` for each queued job.

python -m sluice_services.progress.worker       (reads the same SLUICE_* settings as the service)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from arq import run_worker
from arq.connections import RedisSettings
from prometheus_client import start_http_server
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sluice.logs import configure_logging
from sluice.runtime import bounded_redis
from sluice_services.progress.attempt import execute
from sluice_services.progress.kinds import CHECKSUM_FILES, load_checksum_files
from sluice_services.progress.lease import Timing
from sluice_services.progress.redis_store import RedisStore
from sluice_services.progress.settings import ProgressSettings

QUEUE = "sluice:progress:queue"
log = logging.getLogger("progress.worker")


def store_prefix(settings: ProgressSettings) -> str:
    return f"sluice:{settings.service_name}"


def redis_client(settings: ProgressSettings) -> Redis:
    """The job store's client (the worker has no runtime): every command bounded."""
    return bounded_redis(settings)


def redis_store(settings: ProgressSettings, redis: Redis) -> RedisStore:
    return RedisStore(
        redis,
        store_prefix(settings),
        settings.progress_max_events,
        settings.progress_retention,
        grace=settings.progress_lease_grace,
    )


async def run_job(ctx: dict[str, Any], job_id: str, attempt: int) -> None:
    settings: ProgressSettings = ctx["settings"]
    timing = Timing(settings.progress_lease, settings.progress_lease_grace)
    await execute(ctx["store"], job_id, attempt, timing, ctx["service"])


async def startup(ctx: dict[str, Any]) -> None:
    settings = ProgressSettings()
    assert settings.redis_url, "the job worker needs SLUICE_REDIS_URL"
    configure_logging(f"{settings.service_name}-worker", settings.log_level, settings.log_format)
    CHECKSUM_FILES.update(load_checksum_files(settings.progress_checksum_files))
    ctx["settings"] = settings
    ctx["service"] = f"{settings.service_name}-worker"
    ctx["store"] = redis_store(settings, redis_client(settings))
    if settings.progress_worker_metrics_port:
        start_http_server(
            settings.progress_worker_metrics_port, addr=settings.progress_worker_metrics_host
        )
    log.info("job worker started", extra={"event": "startup"})


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["store"].redis.aclose()


def redis_settings() -> RedisSettings:
    """arq's connection: it retries while Redis is away (stopped, restarting) rather than
    ending the worker, whose running jobs keep their leases meanwhile if they can."""
    url = ProgressSettings().redis_url or "redis://127.0.0.1:6379/0"
    settings = RedisSettings.from_dsn(url)
    settings.retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=-1)
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    return settings


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
