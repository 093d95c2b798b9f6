from __future__ import annotations

from fastapi import FastAPI

from progress.routes import build_router
from progress.settings import ProgressSettings
from sluice.app import create_app as create_sluice_app

SEED_ROUTES = ("/progress",)


def create_app(settings: ProgressSettings | None = None) -> FastAPI:
    """Embedded (in-process jobs, one worker) without SLUICE_REDIS_URL; with it, jobs and
    events live in Redis and `python -m progress.worker` processes run the jobs."""
    return create_sluice_app(
        settings or ProgressSettings(),
        title="Sluice progress",
        routers=[build_router],
        public_routes=SEED_ROUTES,
    )
