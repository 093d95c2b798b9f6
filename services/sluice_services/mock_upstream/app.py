"""The mock-upstream app; what it is and where it runs: ``__init__.py``."""

from __future__ import annotations

from fastapi import FastAPI

from sluice.app import create_app as create_sluice_app
from sluice_services.mock_upstream import SERVICE
from sluice_services.mock_upstream.routes import build_router
from sluice_services.mock_upstream.settings import MockSettings


def create_app(settings: MockSettings | None = None) -> FastAPI:
    return create_sluice_app(
        settings or MockSettings(),
        title=SERVICE.title,
        routers=[build_router],
        public_routes=SERVICE.public_routes,
    )
