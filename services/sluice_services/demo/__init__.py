"""demo: the seed's teaching endpoints, public by default (``SLUICE_PUBLIC_ROUTES=`` closes)."""

from sluice.registry import Service

SEED_ROUTES = ("/toy-stream", "/dummy-counter", "/dummy-events")

SERVICE = Service(
    name="demo",
    title="Sluice demo",
    app="sluice_services.demo.app:create_app",
    settings="sluice_services.demo.settings:DemoSettings",
    examples=("/toy-stream", "/dummy-counter", "/dummy-events"),
    port=8001,
    routes=SEED_ROUTES,
    public_routes=SEED_ROUTES,
)
