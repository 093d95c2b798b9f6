"""The image itself: uid 10001, a read-only root works, ``docker run sluice:local`` with each
SLUICE_SERVICE starts and answers /healthz; no compiler, no pip cache, no tests inside."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest
from deploy.containers.engine import Engine
from deploy.containers.stack import Stack, free_port

from sluice.registry import registry
from tests.containers.conftest import FIGURES

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]
IMAGE = "sluice:local"
KEY = "sk-e2e-image-00000000000000000000001"
# The image's limit: a slim Python, the locked wheels, the services. Debian's python3.11
# stand-in is larger than the official slim image; both stay well under this.
MAX_BYTES = 600 * 1024 * 1024


def sh(engine: Engine, script: str) -> str:
    return engine.command("run", "--rm", "--read-only", "--entrypoint", "sh", IMAGE, "-c", script)


def test_runs_as_10001_and_ships_no_compiler_no_pip_cache_no_tests(engine: Engine) -> None:
    out = sh(
        engine,
        "id -u; id -g; echo home=$HOME; "
        "for c in gcc cc c++ g++ clang make ld as; do command -v $c && echo has=$c; done; "
        "ls -d /root/.cache /app/.cache /tmp/pip* 2>/dev/null | sed 's/^/cache=/'; "
        "find / -xdev \\( -name 'test_*.py' -path '/app/*' -o -path /app/tests \\) -print "
        "| sed 's/^/test=/'; "
        "find /opt/venv /app -name '*.pyc' | head -3 | sed 's/^/pyc=/'; "
        "ls /app; ls /app/services | tr '\\n' ' '",
    )
    lines = out.splitlines()
    assert lines[:2] == ["10001", "10001"], out
    assert not [ln for ln in lines if ln.startswith(("has=", "cache=", "test="))], out
    assert "deploy" in lines and "services" in lines, out
    # the pip of the build stage left no cache behind either (PIP_NO_CACHE_DIR in the build)
    caches = sh(engine, "find / -xdev -type d -name 'pip' -path '*cache*' 2>/dev/null; true")
    assert caches.strip() == "", caches


def test_the_redis_client_imports_on_the_images_python(engine: Engine) -> None:
    """Debian's python3.11 is 3.11.2: redis.asyncio needs async-timeout there (the lock's
    environment marker); the official image's newer 3.11 does not."""
    out = sh(engine, "python -c 'import sys, redis.asyncio, arq; print(sys.version.split()[0])'")
    assert out.strip().startswith("3.11"), out


def test_image_size_is_reported_and_bounded(engine: Engine) -> None:
    size = int(engine.command("image", "inspect", IMAGE, "--format", "{{.Size}}").strip())
    FIGURES["image_mb"] = round(size / 1e6, 1)
    assert 50 * 1024 * 1024 < size < MAX_BYTES


def wait_healthz(url: str, engine: Engine, name: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(url, timeout=2)
            if response.status_code < 500:
                return response.status_code
        state = engine.command("inspect", name, "--format", "{{.State.Status}}", check=False)
        if state.strip() not in ("running", "created", "configured", ""):
            break
        time.sleep(0.5)
    raise AssertionError(f"{name}: {url} never answered:\n{engine.command('logs', name)}")


def test_every_service_starts_with_a_read_only_root_and_answers_healthz(
    engine: Engine, stack: Stack
) -> None:
    """``docker run`` as a user would, each SLUICE_SERVICE, root read-only (only /tmp and the
    log folder writable, as k8s mounts them); the job worker joins the stack's Redis."""
    network = stack.engine.project_objects(stack.project)["network"][0]
    started: dict[str, tuple[str, str]] = {}
    try:
        for name, process in registry().processes.items():
            companion = process.companion
            port = companion.metrics_port if companion else process.service.port
            host_port = free_port()
            container = f"{stack.project}-image-{name}"
            env = ["-e", f"SLUICE_SERVICE={name}", "-e", f"SLUICE_API_KEYS={KEY}"]
            if companion is not None and companion.needs_redis:
                env += ["-e", "SLUICE_REDIS_URL=redis://redis:6379/0", "--network", network]
            engine.command(
                "run",
                "-d",
                "--name",
                container,
                "--read-only",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                "/var/log/sluice",
                "-p",
                f"127.0.0.1:{host_port}:{port}",
                *env,
                IMAGE,
            )
            path = "/" if name == "progress-worker" else "/healthz"
            started[name] = (container, f"http://127.0.0.1:{host_port}{path}")
        for name, (container, url) in started.items():
            assert wait_healthz(url, engine, container) == 200, name
            user = engine.command("exec", container, "id", "-u").strip()
            assert user == "10001", name
            # the image's own HEALTHCHECK command agrees
            engine.command("exec", container, "python", "-m", "sluice.healthcheck")
    finally:
        for container, _ in started.values():
            engine.command("rm", "-f", "-t", "5", container, check=False)
