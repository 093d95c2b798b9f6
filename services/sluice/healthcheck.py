"""``python -m sluice.healthcheck``: exit 0 when this container's service answers /healthz
(the job worker: its metrics endpoint). For Docker's HEALTHCHECK, in exec form."""

from __future__ import annotations

import os
import sys
import urllib.request

from sluice.devstack import SERVICES


def url(environ: dict[str, str]) -> str:
    name = environ.get("SLUICE_SERVICE", "")
    if name == "progress-worker":
        return f"http://127.0.0.1:{environ.get('SLUICE_PROGRESS_WORKER_METRICS_PORT', '8013')}/"
    port = environ.get("SLUICE_BIND", "").rpartition(":")[2]
    if not port and name in SERVICES:
        port = str(SERVICES[name].port)
    return f"http://127.0.0.1:{port or 8000}/healthz"


def main() -> int:
    try:
        with urllib.request.urlopen(url(dict(os.environ)), timeout=3) as response:  # noqa: S310
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
