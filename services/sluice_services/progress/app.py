"""The progress app; what it is and where it runs: ``__init__.py``."""

from __future__ import annotations

from fastapi import FastAPI

from sluice.app import create_app as create_sluice_app
from sluice_services.progress import SERVICE
from sluice_services.progress.routes import build_router
from sluice_services.progress.settings import ProgressSettings


def create_app(settings: ProgressSettings | None = None) -> FastAPI:
    return create_sluice_app(
        settings or ProgressSettings(),
        title=SERVICE.title,
        routers=[build_router],
        public_routes=SERVICE.public_routes,
    )
