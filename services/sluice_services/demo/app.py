from __future__ import annotations

from fastapi import FastAPI

from demo.routes import SEED_ROUTES, build_router
from demo.settings import DemoSettings
from sluice.app import create_app as create_sluice_app


def create_app(settings: DemoSettings | None = None) -> FastAPI:
    """The seed's endpoints are public by default; ``SLUICE_PUBLIC_ROUTES=`` closes them."""
    return create_sluice_app(
        settings or DemoSettings(),
        title="Sluice demo",
        routers=[build_router],
        public_routes=SEED_ROUTES,
    )
