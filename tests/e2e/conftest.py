from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from tests.support.procs import Proc, running, start_nginx, start_service

DEMO_ENV = {
    "SLUICE_DEV_DEMO_TOY_DELAY": "0.3",
    "SLUICE_DEV_DEMO_COUNTER_DELAY": "0.2",
    "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.1",
    "SLUICE_HEARTBEAT_INTERVAL": "5",
}


@pytest.fixture(scope="session")
def demo(log_dir: Path) -> Iterator[Proc]:
    proc = start_service("demo", log_dir, DEMO_ENV, workers=2)
    with running(proc):
        yield proc


@pytest.fixture(scope="session")
def front_door(demo: Proc, log_dir: Path) -> Iterator[Proc]:
    proc = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, log_dir)
    with running(proc):
        yield proc


K_CAP = "sk-e2e-cap-0000000000000000000001"
K_RATE = "sk-e2e-rate-000000000000000000002"
K_METRICS = "sk-e2e-metrics-0000000000000003"
K_BROWSER = "sk-e2e-browser-0000000000000004"
ALL_KEYS = (K_CAP, K_RATE, K_METRICS, K_BROWSER)


@pytest.fixture(scope="module")
def secured(log_dir: Path, redis_server: Proc) -> Iterator[tuple[Proc, Proc]]:
    env = {
        "SLUICE_API_KEYS": ",".join(ALL_KEYS),
        "SLUICE_PUBLIC_ROUTES": "",  # the seed routes too need a key here
        "SLUICE_REDIS_URL": redis_server.extra["url"],
        "SLUICE_RATE_LIMIT": "6/minute",
        "SLUICE_MAX_STREAMS_PER_KEY": "3",
        "SLUICE_DEV_DEMO_TOY_DELAY": "0.2",
        "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.1",
    }
    redis_sync.Redis.from_url(redis_server.extra["url"]).flushdb()
    demo = start_service("demo", log_dir, env, workers=2)
    nginx = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, log_dir)
    with running(nginx, demo):
        yield demo, nginx
