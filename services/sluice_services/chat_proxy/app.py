"""The chat-proxy app; what it is and where it runs: ``__init__.py``."""

from __future__ import annotations

from fastapi import FastAPI

from sluice.app import create_app as create_sluice_app
from sluice_services.chat_proxy import SERVICE
from sluice_services.chat_proxy.routes import build_router
from sluice_services.chat_proxy.settings import ChatSettings


def create_app(settings: ChatSettings | None = None) -> FastAPI:
    return create_sluice_app(
        settings or ChatSettings(),
        title=SERVICE.title,
        routers=[build_router],
        public_routes=SERVICE.public_routes,
    )
