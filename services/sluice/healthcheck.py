"""``python -m sluice.healthcheck``: exit 0 when this container's process answers: a service
its ``/healthz``, a companion (a job worker) its metrics endpoint. For Docker's HEALTHCHECK,
in exec form; what runs here is ``SLUICE_SERVICE`` (see ``sluice.registry``)."""

from __future__ import annotations

import os
import sys
import urllib.request

from sluice.registry import registry


def url(environ: dict[str, str]) -> str:
    try:
        process = registry().process(environ.get("SLUICE_SERVICE", ""))
    except KeyError as exc:
        raise SystemExit(f"SLUICE_SERVICE: {exc.args[0]}") from None
    if process.companion is not None:
        port = environ.get(process.companion.port_variable, str(process.companion.metrics_port))
        return f"http://127.0.0.1:{port}/"
    port = environ.get("SLUICE_BIND", "").rpartition(":")[2] or str(process.service.port)
    return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with local.open(url(dict(os.environ)), timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
