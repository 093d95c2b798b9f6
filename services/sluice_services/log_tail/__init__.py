"""log-tail: ``tail -F`` of allow-listed files; ``/logs`` is the seed's public demo.

Under ``make run`` it follows the stack's own logs (every process's but its own).
"""

from sluice.registry import Service

SERVICE = Service(
    name="log-tail",
    title="Sluice log-tail",
    app="sluice_services.log_tail.app:create_app",
    settings="sluice_services.log_tail.settings:LogTailSettings",
    examples=("/logs", "/logs/nginx"),
    port=8004,
    routes=("/logs", "/logs/"),
    public_routes=("/logs",),
    dev_env={"SLUICE_LOG_TAIL_FILES": "{stack_logs}"},
)
