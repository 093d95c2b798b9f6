from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from sluice.settings import CoreSettings


class ProgressSettings(CoreSettings):
    service_name: str = "progress"
    renamed: ClassVar[dict[str, str]] = {
        "progress_seed_steps": "dev_progress_seed_steps",
        "progress_seed_delay": "dev_progress_seed_delay",
    }
    progress_max_events: int = Field(10_000, ge=100, description="Events kept per job.")
    progress_max_jobs: int = Field(10_000, ge=10, description="Jobs kept in memory mode.")
    progress_retention: int = Field(
        3600, ge=10, description="Seconds a finished job and its events are kept (Redis)."
    )
    progress_lease: float = Field(
        10.0,
        gt=0,
        description="Seconds of lease a running job always has left; renewed every lease/3 s.",
    )
    progress_lease_grace: float = Field(
        5.0,
        ge=0,
        description="Seconds past a lease's expiry (by Redis's clock) before the job is reaped.",
    )
    progress_checksum_files: str = Field(
        "", description="name=path pairs the checksum kind may read (comma-separated)."
    )
    progress_checksum_max_mb: int = Field(4096, ge=1, description="Largest checksum job.")
    dev_progress_seed_steps: int = Field(100, ge=1, description="Steps of the seed's /progress.")
    dev_progress_seed_delay: float = Field(
        0.1, ge=0, description="Seconds between /progress steps."
    )
    progress_worker_metrics_port: int = Field(
        8013, ge=0, description="Port of the job worker's /metrics (0: off)."
    )
    progress_worker_metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address of the job worker's /metrics (the image's entrypoint: 0.0.0.0).",
    )
