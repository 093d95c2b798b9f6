from __future__ import annotations

from fastapi import FastAPI

from log_tail.routes import build_router
from log_tail.settings import LogTailSettings
from sluice.app import create_app as create_sluice_app

SEED_ROUTES = ("/logs",)


def create_app(settings: LogTailSettings | None = None) -> FastAPI:
    """``/logs`` is the seed's public demo; following a file (``/logs/{name}``) needs a key."""
    return create_sluice_app(
        settings or LogTailSettings(),
        title="Sluice log-tail",
        routers=[build_router],
        public_routes=SEED_ROUTES,
    )
