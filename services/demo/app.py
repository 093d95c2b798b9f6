from __future__ import annotations

from fastapi import FastAPI

from demo.routes import router
from demo.settings import DemoSettings
from sluice.app import create_app as create_sluice_app


def create_app(settings: DemoSettings | None = None) -> FastAPI:
    return create_sluice_app(settings or DemoSettings(), title="Sluice demo", routers=[router])
