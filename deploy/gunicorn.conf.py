"""gunicorn configuration shared by every Sluice service (make run, compose, k8s).

Streams are long-lived, so: no ``max_requests`` recycling (it would cut streams at
random), a graceful timeout that covers the drain window (the core ends streams
itself on SIGTERM, see services/sluice/drain.py), and prometheus-client in
multiprocess mode with its folder wiped at start and dead workers marked.
"""

import math
import os
import shutil
import tempfile
from pathlib import Path

from sluice.settings import CoreSettings, ServerSettings

_server = ServerSettings()
_service = CoreSettings().service_name

bind = _server.bind
workers = _server.workers
worker_class = "sluice.worker.SluiceWorker"  # uvicorn's, with request-head limits
max_requests = 0  # never recycle a worker under live streams
max_requests_jitter = 0
graceful_timeout = math.ceil(_server.effective_graceful_timeout)
# The worker heartbeat to the master, not a request timeout. uvicorn stops beating while it
# waits for open streams at shutdown, which a rolling restart's drain may take in full.
timeout = max(30, graceful_timeout + 10)
keepalive = _server.keepalive
forwarded_allow_ips = _server.trusted_proxies
proc_name = f"sluice-{_service}"
accesslog = None  # one JSON line a request comes from the app
control_socket_disable = True  # one per user by default: several services would collide

# Multiprocess metrics: set before any worker imports prometheus_client.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
    prefix=f"sluice-metrics-{_service}-"
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

# Rolling restarts: each worker says ready/leaving here (sluice/handoff.py).
_state_dir = os.environ.get("SLUICE_WORKER_STATE_DIR") or tempfile.mkdtemp(
    prefix=f"sluice-workers-{_service}-"
)
os.environ["SLUICE_WORKER_STATE_DIR"] = _state_dir

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "sluice.logs.JsonFormatter", "service": _service}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": [], "propagate": False},
    },
}


def on_starting(server: object) -> None:
    """Wipe what an earlier run left: stale metrics would be summed in forever, stale
    worker states would be read as this run's."""
    for folder in (_metrics_dir, _state_dir):
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    from sluice.handoff import Siblings

    pid = worker.pid  # type: ignore[attr-defined]
    multiprocess.mark_process_dead(pid)
    Siblings(Path(_state_dir)).forget(pid)
