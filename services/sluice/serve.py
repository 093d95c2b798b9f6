"""The container entrypoint: ``python -m sluice.serve`` runs the service ``SLUICE_SERVICE``
names, with the very gunicorn command ``make run`` uses (or the progress job worker)."""

from __future__ import annotations

import os
import sys

from sluice.devstack import SERVICES, service_command

WORKER = "progress-worker"


def command(environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    name = environ.get("SLUICE_SERVICE", "")
    if name == WORKER:
        # Like SLUICE_BIND below: in a container /metrics must answer Prometheus's container.
        host = environ.get("SLUICE_PROGRESS_WORKER_METRICS_HOST", "0.0.0.0")
        env = {"SLUICE_SERVICE_NAME": "progress", "SLUICE_PROGRESS_WORKER_METRICS_HOST": host}
        return [sys.executable, "-m", "progress.worker"], env
    service = SERVICES.get(name)
    if service is None:
        known = ", ".join([*SERVICES, WORKER])
        raise SystemExit(f"SLUICE_SERVICE={name!r} is not one of: {known}")
    bind = environ.get("SLUICE_BIND", f"0.0.0.0:{service.port}")
    return service_command(service, bind)


def main() -> None:
    argv, extra = command(dict(os.environ))
    os.execvpe(argv[0], argv, {**os.environ, **extra})  # noqa: S606 - argv, no shell


if __name__ == "__main__":
    main()
