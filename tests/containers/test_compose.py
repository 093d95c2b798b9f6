"""`docker compose up` for real: every container healthy, deploy/smoke.sh (every README example)
through nginx, Prometheus scraping every target (progress-worker included) with every rule
evaluating, operator ports on 127.0.0.1 only and no lifecycle API."""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import httpx
import pytest
import yaml
from deploy.containers.engine import run
from deploy.containers.stack import COMPOSE_FILE, PINNED_MARK, Stack, stage

from tests.containers.conftest import FIGURES

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]


def test_every_container_is_healthy(stack: Stack) -> None:
    status = stack.health_now()
    assert set(status.values()) <= {"healthy", "none"}, status
    assert len(status) == len(stack.services), status  # one container a service, all up


def test_services_resolve_from_hosts_not_dns(stack: Stack) -> None:
    """The harness's bridge for podman's DNS (Stack.pin_names): every service is in each
    container's /etc/hosts, at the address the engine gave it, so a query aardvark-dns
    drops while a container joins or leaves cannot fail a request."""
    if stack.engine.kind != "podman":
        pytest.skip("Docker's DNS needs no bridge")
    (chat_proxy,) = stack.containers("chat-proxy")
    hosts = stack.engine.command("exec", chat_proxy, "cat", "/etc/hosts")
    pinned = dict(line.split()[::-1] for line in hosts.split(PINNED_MARK, 1)[1].splitlines())
    for service in ("redis", "mock-upstream", "progress"):
        (name,) = stack.containers(service)
        ip = stack.engine.command(
            "inspect", name, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ).strip()
        assert pinned.get(service) == ip, (service, ip, hosts)
    resolved = stack.engine.command(
        "exec", chat_proxy, "python", "-c", "import socket; print(socket.gethostbyname('redis'))"
    ).strip()
    assert resolved == pinned["redis"]


def test_the_console_is_served_by_the_nginx_container(stack: Stack) -> None:
    page = httpx.get(f"{stack.base}/console/", timeout=10)
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name in ("console.js", "console.css"):
        served = httpx.get(f"{stack.base}/console/{name}", timeout=10)
        assert served.status_code == 200
        assert served.content == (COMPOSE_FILE.parent / "nginx" / "console" / name).read_bytes()


def test_smoke_sh_passes_every_readme_example(stack: Stack) -> None:
    started = time.monotonic()
    out = stack.smoke()
    FIGURES["smoke_s"] = round(time.monotonic() - started, 1)
    assert "all README examples passed" in out  # smoke.sh
    assert "README examples ran as written" in out  # deploy/readme_examples.py
    assert "ok: job events" in out  # the job worker ran it (it failed before: no metrics folder)


def prometheus(stack: Stack, path: str) -> Any:
    response = httpx.get(f"{stack.prometheus}{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_prometheus_has_every_target_up_and_every_rule_evaluating(stack: Stack) -> None:
    configured = yaml.safe_load(
        (COMPOSE_FILE.parent / "deploy/prometheus/prometheus.compose.yml").read_text()
    )
    wanted = {t for c in configured["scrape_configs"][0]["static_configs"] for t in c["targets"]}
    assert "progress-worker:8013" in wanted
    deadline = time.monotonic() + 90
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        active = prometheus(stack, "/api/v1/targets")["activeTargets"]
        health = {t["labels"]["instance"]: t["health"] for t in active}
        if set(health) == wanted and set(health.values()) == {"up"}:
            break
        time.sleep(1)
    assert health == dict.fromkeys(wanted, "up"), prometheus(stack, "/api/v1/targets")
    up = prometheus(stack, "/api/v1/query?query=up")["result"]
    assert sorted(r["metric"]["instance"] for r in up if r["value"][1] == "1") == sorted(wanted)

    # every rule evaluated at least once since start, with no error
    deadline = time.monotonic() + 60
    rules: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        groups = prometheus(stack, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(not r["lastEvaluation"].startswith("0001-") for r in rules):
            break
        time.sleep(1)
    bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert rules and bad == []
    assert all(not r["lastEvaluation"].startswith("0001-") for r in rules)
    recording = [r["name"] for r in rules if r["type"] == "recording"]
    FIGURES["prometheus_rules"] = f"{len(rules)} ({len(recording)} recording), all ok"
    assert recording


def test_operator_ports_are_published_on_loopback_only(stack: Stack) -> None:
    """nginx and Prometheus publish, and Grafana where it runs (Docker; podman has no image
    for it here): each on 127.0.0.1 only, and no other container publishes anything."""
    published: dict[str, list[str]] = {}
    for name in stack.containers():
        service = stack.engine.command(
            "inspect", name, "--format", '{{index .Config.Labels "com.docker.compose.service"}}'
        ).strip()
        ports = json.loads(
            stack.engine.command("inspect", name, "--format", "{{json .NetworkSettings.Ports}}")
        )
        for bindings in (ports or {}).values():
            for binding in bindings or []:
                published.setdefault(service, []).append(binding["HostIp"])
    wanted = {"nginx", "prometheus"} | ({"grafana"} & set(stack.services))
    assert set(published) == wanted, published
    assert all(ip == "127.0.0.1" for ips in published.values() for ip in ips), published


def test_compose_defaults_publish_operator_ports_on_loopback_and_nginx_everywhere() -> None:
    folder = stage("sk-e2e-compose-defaults-0000000000000001")
    try:
        rendered = yaml.safe_load(
            run(
                [
                    "docker-compose",
                    "--project-directory",
                    str(folder),
                    "-f",
                    str(COMPOSE_FILE),
                    "config",
                ]
            ).stdout
        )
    finally:
        shutil.rmtree(folder)
    services = rendered["services"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090/tcp"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000/tcp"]
    assert services["nginx"]["ports"] == [{"published": 8080, "target": 8080}]
    assert not any("enable-lifecycle" in arg for arg in services["prometheus"]["command"])


def test_prometheus_lifecycle_api_is_off(stack: Stack) -> None:
    for path in ("/-/reload", "/-/quit"):
        response = httpx.post(f"{stack.prometheus}{path}", timeout=10)
        assert response.status_code == 403, (path, response.text)
        assert "Lifecycle API is not enabled" in response.text
    assert httpx.get(f"{stack.prometheus}/-/healthy", timeout=10).status_code == 200
