"""The log-tail app; what it is and where it runs: ``__init__.py``."""

from __future__ import annotations

from fastapi import FastAPI

from sluice.app import create_app as create_sluice_app
from sluice_services.log_tail import SERVICE
from sluice_services.log_tail.routes import build_router
from sluice_services.log_tail.settings import LogTailSettings


def create_app(settings: LogTailSettings | None = None) -> FastAPI:
    return create_sluice_app(
        settings or LogTailSettings(),
        title=SERVICE.title,
        routers=[build_router],
        public_routes=SERVICE.public_routes,
    )
