"""mock-upstream: an OpenAI-compatible model server for make run and the tests (no key).

It serves chat completions, legacy completions, embeddings and the Responses API
(``routes.py``), each deterministic (``text.py``) and with faults on demand (``faults.py``),
and says what it saw of each request (``ledger.py``).

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
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/mock/stats",
        "/mock/requests/{request_id}",
    ),
    api_keys=False,
)
