"""mock-upstream: an OpenAI-compatible model server for make run and the tests (no key).

Internal: nginx sends it nothing. Open by default, like a local model server; set
``SLUICE_API_KEYS`` and ``SLUICE_PUBLIC_ROUTES=`` to make it demand the upstream key.
"""

from sluice.registry import Service

SERVICE = Service(
    name="mock-upstream",
    title="Sluice mock upstream (OpenAI-compatible)",
    app="sluice_services.mock_upstream.app:create_app",
    settings="sluice_services.mock_upstream.settings:MockSettings",
    port=8009,
    public_routes=(
        "/v1/models",
        "/v1/chat/completions",
        "/mock/stats",
        "/mock/requests/{request_id}",
    ),
    api_keys=False,
)
