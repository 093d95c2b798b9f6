"""The README's "Add your own streaming service", followed literally in a copy of the project:
``make new-service``, the route as the README writes it, then the new service for real under
gunicorn behind nginx: auth, rate limits, stream caps, metrics, drain, and its place in
compose, k8s and Prometheus, without a byte of the core changed."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from sluice_dev import nginx
from tests.support.paths import ROOT
from tests.support.procs import Proc, free_port, start, wait_http

SECTION = "## Add your own streaming service"
KEY, OTHER_KEY = "sk-e2e-price-feed-one", "sk-e2e-price-feed-two"
RATE = 6  # SLUICE_PRICE_FEED__RATE_LIMIT, per key and route
CAP = 2  # SLUICE_MAX_STREAMS_PER_KEY


def blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start_at = readme.index(f"\n{SECTION}\n")
    section = readme[start_at : readme.index("\n## ", start_at + 1)]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        sha.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def copy_project(target: Path) -> None:
    """Every file git tracks or would (a clean clone's content), times kept (make's stamps)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def env_for(project: Path) -> dict[str, str]:
    """The copy's code first on the path: its core, its services (the new one), its dev tool."""
    return {**os.environ, "PYTHONPATH": f"{project / 'services'}:{project / 'dev'}"}


def run(argv: list[str], project: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=project, env=env_for(project), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sluice-own-service-") as folder:
        root = Path(folder) / "project"
        copy_project(root)
        core = digest(root / "services" / "sluice")
        (command,) = [line for line in blocks("sh")[0].splitlines() if line.strip()]
        argv = [*shlex.split(command), f"VENV={ROOT / '.venv'}"]
        planned = run([argv[0], "-n", *argv[1:]], root).stdout
        assert "pip" not in planned, planned  # the venv is this checkout's, as it is
        generated = run(argv, root).stdout
        assert "wrote services/sluice_services/price_feed/routes.py" in generated, generated
        (python,) = blocks("python")
        (root / "services" / "sluice_services" / "price_feed" / "routes.py").write_text(python)
        assert digest(root / "services" / "sluice") == core, "the core was changed"
        yield root


def test_the_declarations_compose_k8s_and_nginx_agree_and_its_test_passes(project: Path) -> None:
    run([sys.executable, "-m", "sluice_dev", "sync", "--check"], project)
    run_dir = project / ".run"
    prepared = [sys.executable, "-m", "sluice_dev", "prepare", "--run-dir", str(run_dir)]
    run(prepared, project)  # make run's first half: its Procfile and nginx have it
    procfile = (run_dir / "Procfile").read_text()
    assert (
        "\nprice-feed: env " in procfile
        and "sluice_services.price_feed.app:create_app()" in procfile
    )
    assert "location /price-feed/ {" in (run_dir / "nginx" / "conf.d" / "sluice.conf").read_text()
    found = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/price_feed"],
        project,
    )
    assert "2 passed" in found.stdout, found.stdout
    ruff = str(ROOT / ".venv" / "bin" / "ruff")
    written = ["services/sluice_services/price_feed", "tests/price_feed"]
    run([ruff, "check", *written], project)
    run([ruff, "format", "--check", *written], project)
    typed = [sys.executable, "-m", "mypy", "--strict", "services/sluice_services/price_feed"]
    run(typed, project, timeout=300)


def test_it_is_in_compose_k8s_and_prometheus(project: Path) -> None:
    (project / ".env").write_text(f"SLUICE_API_KEYS={KEY}\n")
    rendered = yaml.safe_load(run(["docker-compose", "config"], project).stdout)
    feed = rendered["services"]["price-feed"]
    assert feed["environment"]["SLUICE_SERVICE"] == "price-feed"
    assert feed["environment"]["SLUICE_BIND"] == "0.0.0.0:8005"
    assert "price-feed" in rendered["services"]["nginx"]["depends_on"]
    for overlay in ("dev", "prod"):
        folder = project / "k8s" / "overlays" / overlay
        shutil.copy(folder / "secrets.env.example", folder / "secrets.env")
    documents = list(yaml.safe_load_all(run(["kubectl", "kustomize", "k8s"], project).stdout))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents if d}
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"):
        assert (kind, "price-feed" if kind != "NetworkPolicy" else "allow-price-feed") in kinds
    prometheus = (project / "deploy" / "prometheus" / "prometheus.compose.yml").read_text()
    assert '["price-feed:8005"]' in prometheus
    checked = subprocess.run(
        ["promtool", "check", "config", "prometheus.compose.yml"],
        cwd=project / "deploy" / "prometheus",
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def feed(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """The new service as the image runs it (``python -m sluice.serve``), one worker."""
    logs = tmp_path_factory.mktemp("price-feed")
    port = free_port()
    env = {
        **env_for(project),
        "SLUICE_SERVICE": "price-feed",
        "SLUICE_BIND": f"127.0.0.1:{port}",
        "SLUICE_API_KEYS": f"{KEY},{OTHER_KEY}",
        "SLUICE_PRICE_FEED__RATE_LIMIT": f"{RATE}/minute",
        "SLUICE_MAX_STREAMS_PER_KEY": str(CAP),
        "SLUICE_PRICE_FEED_INTERVAL": "0.05",
        "SLUICE_DRAIN_WINDOW": "2",
        "SLUICE_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(logs / "metrics"),
    }
    (logs / "metrics").mkdir()
    proc = start(f"price-feed-{port}", [sys.executable, "-m", "sluice.serve"], logs, env)
    proc.port = port
    try:
        wait_http(f"{proc.url}/readyz", proc, timeout=30)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def door(project: Path, feed: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """nginx from the copy's template (its generated locations); the others answer 502."""
    logs = tmp_path_factory.mktemp("price-feed-nginx")
    template = (project / "nginx" / "templates" / "sluice.conf.template").read_text()
    closed = f"127.0.0.1:{free_port()}"
    names = re.findall(r"\$\{SLUICE_([A-Z0-9_]+)_ADDR\}", template)
    addresses = {name.lower().replace("_", "-"): closed for name in names}
    assert "price-feed" in addresses
    addresses["price-feed"] = f"127.0.0.1:{feed.port}"
    port = free_port()
    conf = nginx.write(project / "nginx", logs / "nginx", f"127.0.0.1:{port}", addresses)
    proc = start(f"nginx-{port}", nginx.command(conf), logs)
    proc.port = port
    try:
        wait_http(f"{proc.url}/healthz", proc)
        yield proc
    finally:
        proc.stop()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_is_needed_and_a_bad_symbol_is_refused_in_json(door: Proc) -> None:
    refused = httpx.get(f"{door.url}/price-feed/prices", timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_api_key"
    bad = httpx.get(f"{door.url}/price-feed/prices?symbol=../../etc", headers=auth(), timeout=10)
    assert bad.status_code == 422, bad.text
    assert "symbol" in bad.text and bad.json()["error"]["type"] == "validation_error"


def test_prices_stream_through_nginx_with_ids(door: Proc) -> None:
    url = f"{door.url}/price-feed/prices?symbol=ACME"
    with httpx.stream("GET", url, headers=auth(), timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        seen: list[str] = []
        for line in response.iter_lines():
            seen.append(line)
            if sum(line.startswith("id: ") for line in seen) == 3:
                break
    assert [line for line in seen if line.startswith("id: ")] == ["id: 1", "id: 2", "id: 3"]
    assert "event: price" in seen and any('"symbol":"ACME"' in line for line in seen)


def test_the_stream_cap_per_key_holds(door: Proc) -> None:
    url = f"{door.url}/price-feed/events"
    with httpx.Client(timeout=10) as client:
        held = [client.stream("GET", url, headers=auth()) for _ in range(CAP)]
        opened = [stream.__enter__() for stream in held]
        try:
            assert [r.status_code for r in opened] == [200] * CAP
            over = client.get(url, headers=auth())
            assert over.status_code == 429, over.text
            assert over.json()["error"]["code"] == "too_many_streams"
            assert over.headers["retry-after"] == "5"
        finally:
            for stream in held:
                stream.__exit__(None, None, None)


def test_the_scoped_rate_limit_holds(door: Proc) -> None:
    url = f"{door.url}/price-feed/events"
    codes = []
    for _ in range(RATE + 2):
        with httpx.stream("GET", url, headers=auth(OTHER_KEY), timeout=10) as response:
            codes.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) > 0
                assert response.read() and response.json()["error"]["code"] == "rate_limited"
    assert codes == [200] * RATE + [429, 429], codes


def test_its_metrics_are_the_cores(feed: Proc) -> None:
    text = httpx.get(f"{feed.url}/metrics", timeout=10).text
    assert 'sluice_streams_started_total{route="/price-feed/prices",service="price-feed"}' in text
    assert "sluice_rate_limited_total{" in text and 'service="price-feed"' in text


def test_a_stopping_worker_drains_its_streams_with_a_reconnect_hint(door: Proc, feed: Proc) -> None:
    got: list[str] = []

    def follow() -> None:
        url = f"{door.url}/price-feed/prices"
        with httpx.stream("GET", url, headers=auth(), timeout=20) as response:
            got.extend(response.iter_lines())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    deadline = 50
    while not any(line.startswith("id: ") for line in got) and deadline:
        threading.Event().wait(0.1)
        deadline -= 1
    os.kill(feed.pid, signal.SIGTERM)
    reader.join(15)
    assert not reader.is_alive()
    assert "event: reconnect" in got, got[-10:]
    assert feed.popen.wait(20) == 0
