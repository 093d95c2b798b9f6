from __future__ import annotations

from fastapi import FastAPI

from chat_proxy.routes import build_router
from chat_proxy.settings import ChatSettings
from sluice.app import create_app as create_sluice_app

SEED_ROUTES = ("/chat-stream",)


def create_app(settings: ChatSettings | None = None) -> FastAPI:
    """``/v1/*`` needs a key; the seed's ``/chat-stream`` is public unless
    ``SLUICE_PUBLIC_ROUTES`` says otherwise (set it empty in front of a paid model)."""
    return create_sluice_app(
        settings or ChatSettings(),
        title="Sluice chat-proxy",
        routers=[build_router],
        public_routes=SEED_ROUTES,
    )
