"""The container entrypoint: ``python -m sluice.serve`` runs what ``SLUICE_SERVICE`` names
(a declared service, or a companion process such as a job worker; see ``sluice.registry``),
with the very gunicorn command ``make run`` uses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sluice.registry import Process, Service, registry

# The shared gunicorn configuration: deploy/gunicorn.conf.py beside services/ (the image
# copies both under /app; make run and the tests use the checkout's).
GUNICORN_CONF = Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py"


def gunicorn_command(
    service: Service, bind: str, conf: Path = GUNICORN_CONF
) -> tuple[list[str], dict[str, str]]:
    """The gunicorn command line and the environment it adds for one service."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    env = {"SLUICE_SERVICE_NAME": service.name, "SLUICE_BIND": bind}
    return [gunicorn, "-c", str(conf), service.gunicorn_app], env


def process_command(process: Process, environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """In a container: a service listens on every interface, on its declared port unless
    ``SLUICE_BIND`` says; a companion gets its ``container_env`` (what it needs there)."""
    companion = process.companion
    if companion is not None:
        port = environ.get(companion.port_variable, str(companion.metrics_port))
        env = {"SLUICE_SERVICE_NAME": process.service.name, companion.port_variable: port}
        env |= {k: environ.get(k, v) for k, v in companion.container_env.items()}
        return [sys.executable, "-m", companion.module], env
    bind = environ.get("SLUICE_BIND", f"0.0.0.0:{process.service.port}")
    return gunicorn_command(process.service, bind)


def command(environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    try:
        process = registry().process(environ.get("SLUICE_SERVICE", ""))
    except KeyError as exc:
        raise SystemExit(f"SLUICE_SERVICE: {exc.args[0]}") from None
    return process_command(process, environ)


def main() -> None:
    argv, extra = command(dict(os.environ))
    if not GUNICORN_CONF.is_file() and argv[1:2] == ["-c"]:
        raise SystemExit(f"sluice.serve: no gunicorn configuration at {GUNICORN_CONF}")
    os.execvpe(argv[0], argv, {**os.environ, **extra})  # noqa: S606 - argv, no shell


if __name__ == "__main__":
    main()
