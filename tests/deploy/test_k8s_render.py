"""What a render of k8s/overlays/dev shows without a cluster: every Service selects pods and
targets a port they have, every probe's port exists, the NetworkPolicies allow exactly the
traffic the stack needs, and nginx's ConfigMap is the very template compose mounts."""

from __future__ import annotations

from typing import Any

import pytest
from deploy.containers import kube

from sluice.registry import registry
from tests.support.paths import ROOT

Doc = dict[str, Any]
ANY = "*"  # a peer-less rule: from anywhere
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}  # the scraper's pods (any namespace)


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return kube.render("dev", "sk-test-render-0000000000000000000001")


def workloads(docs: list[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in kube.WORKLOADS}


def labels(workload: Doc) -> dict[str, str]:
    found: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return found


def ports(workload: Doc) -> dict[str | int, int]:
    found: dict[str | int, int] = {}
    for container in workload["spec"]["template"]["spec"]["containers"]:
        for port in container.get("ports") or []:
            found[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                found[port["name"]] = port["containerPort"]
    return found


def matches(selector: dict[str, str], pod_labels: dict[str, str]) -> bool:
    return all(pod_labels.get(k) == v for k, v in selector.items())


def test_every_service_selects_pods_and_targets_a_port_they_have(docs: list[Doc]) -> None:
    pods = workloads(docs)
    for service in (d for d in docs if d["kind"] == "Service"):
        selected = [w for w in pods.values() if matches(service["spec"]["selector"], labels(w))]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert all(target in ports(w) for w in selected), (service["metadata"]["name"], port)


def test_every_probe_port_exists(docs: list[Doc]) -> None:
    for name, workload in workloads(docs).items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = container.get(kind) or {}
                action = probe.get("httpGet") or probe.get("tcpSocket")
                if action:
                    assert action["port"] in ports(workload), (name, kind, action)


def allowed(docs: list[Doc]) -> set[tuple[str, str, int]]:
    """(source, destination, port) the ingress policies let through; source is a workload,
    "prometheus", or ANY. Every pod is under default-deny (checked below)."""
    pods = workloads(docs)
    sources = {name: labels(w) for name, w in pods.items()} | {"prometheus": PROMETHEUS}
    edges = set()
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        targets = [n for n, w in pods.items() if matches(selector, labels(w))]
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            rule_ports = [p["port"] for p in rule.get("ports") or []]
            for target in targets:
                numbers = [ports(pods[target]).get(p, p) for p in rule_ports]
                for port in numbers:
                    if not peers:
                        edges.add((ANY, target, int(port)))
                        continue
                    for peer in peers:
                        wanted = peer.get("podSelector", {}).get("matchLabels", {})
                        for source, source_labels in sources.items():
                            if source == "prometheus" and "namespaceSelector" not in peer:
                                continue  # Prometheus runs in its own namespace
                            if matches(wanted, source_labels):
                                edges.add((source, target, int(port)))
    return edges


def test_network_policies_allow_exactly_what_the_stack_needs(docs: list[Doc]) -> None:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert any(
        p["spec"]["podSelector"] == {}
        and p["spec"]["policyTypes"] == ["Ingress"]
        and not p["spec"].get("ingress")
        for p in policies
    ), "no default-deny ingress policy"
    services = {service.name: service.port for service in registry()}
    public = {"demo", "chat-proxy", "progress", "log-tail"}
    redis_clients = {"demo", "chat-proxy", "progress", "progress-worker", "log-tail"}
    metrics = dict(services)
    for service in registry():
        metrics |= {c.name: c.metrics_port for c in service.companions}
    expected = {(ANY, "nginx", 8080)}
    expected |= {("nginx", name, services[name]) for name in public}
    expected |= {(name, "redis", 6379) for name in redis_clients}
    expected |= {("chat-proxy", "mock-upstream", services["mock-upstream"])}
    expected |= {("prometheus", name, port) for name, port in metrics.items()}
    got = allowed(docs)
    assert got - expected == set(), "allowed but not needed"
    assert expected - got == set(), "needed but not allowed"


def test_the_nginx_configmap_is_the_template_compose_mounts(docs: list[Doc]) -> None:
    template = (ROOT / "nginx" / "templates" / "sluice.conf.template").read_text()
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "sluice.conf.template" in d["data"]]
    assert len(maps) == 1
    assert maps[0]["data"]["sluice.conf.template"] == template
    compose = (ROOT / "compose.yaml").read_text()
    assert "./nginx/templates:/etc/nginx/templates:ro" in compose
