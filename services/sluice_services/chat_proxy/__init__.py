"""chat-proxy: OpenAI-compatible token streaming to a model server (the mock one under make run).

``/v1/*`` needs a key; the seed's ``/chat-stream`` is public unless ``SLUICE_PUBLIC_ROUTES``
says otherwise (set it empty in front of a paid model). Resumable answers live in Redis when
there is one (every worker and replica reads them), else in the worker's memory.
"""

from sluice.registry import Service

SERVICE = Service(
    name="chat-proxy",
    title="Sluice chat-proxy",
    app="sluice_services.chat_proxy.app:create_app",
    settings="sluice_services.chat_proxy.settings:ChatSettings",
    examples=("/chat-stream?prompt=Tell+a+story", "/v1/models"),
    port=8002,
    routes=("/v1/", "/chat-stream"),
    public_routes=("/chat-stream",),
    keepalive=128,
    uses_redis=True,  # resumable answers, shared by every worker (and its limits and caps)
    dev_env={"SLUICE_UPSTREAM_BASE_URL": "http://{mock-upstream}/v1"},
)
