from __future__ import annotations

from fastapi import FastAPI

from mock_upstream.routes import build_router
from mock_upstream.settings import MockSettings
from sluice.app import create_app as create_sluice_app

PUBLIC = ("/v1/models", "/v1/chat/completions", "/mock/stats", "/mock/requests/{request_id}")


def create_app(settings: MockSettings | None = None) -> FastAPI:
    """Open by default, like a local model server; set SLUICE_API_KEYS and
    ``SLUICE_PUBLIC_ROUTES=`` to make it demand the upstream key."""
    return create_sluice_app(
        settings or MockSettings(),
        title="Sluice mock upstream (OpenAI-compatible)",
        routers=[build_router],
        public_routes=PUBLIC,
    )
