"""Where ``compose.yaml`` and ``k8s/base`` disagree with the services' declarations.

Both stay plain files that users edit; these checks say, one line each, what is missing or
different: a declared process with no container, a port, a metrics port or an address that
is not the declared one, a container of the image that nothing declares. ``python -m
sluice_dev sync --check`` runs them, and so does the suite.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sluice.registry import Process, Registry

IMAGE = "sluice"  # compose's sluice:local, k8s's sluice (renamed by the kustomization)


def _env(items: Any) -> dict[str, str]:
    """A compose ``environment`` (mapping or list) or a k8s ``env`` list, as a dict."""
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    found: dict[str, str] = {}
    for item in items or []:
        if isinstance(item, Mapping):
            found[str(item["name"])] = str(item.get("value", ""))
        else:
            name, _, value = str(item).partition("=")
            found[name] = value
    return found


def compose(document: Mapping[str, Any], services: Registry) -> list[str]:
    """What ``compose.yaml`` (loaded) gets wrong about the declared processes."""
    problems: list[str] = []
    containers = document.get("services") or {}
    ours = {
        name: spec
        for name, spec in containers.items()
        if str((spec or {}).get("image", "")).split(":")[0] == IMAGE
    }
    for name, process in services.processes.items():
        spec = ours.get(name)
        if spec is None:
            problems.append(f"compose.yaml: no {name} service (SLUICE_SERVICE={name})")
            continue
        env = _env(spec.get("environment"))
        if env.get("SLUICE_SERVICE") != name:
            problems.append(f"compose.yaml: {name} runs SLUICE_SERVICE={env.get('SLUICE_SERVICE')}")
        if process.companion is None:
            bind = f"0.0.0.0:{process.service.port}"
            if env.get("SLUICE_BIND", bind) != bind:
                problems.append(f"compose.yaml: {name} binds {env['SLUICE_BIND']}, not {bind}")
        else:
            variable, port = process.companion.port_variable, process.companion.metrics_port
            if env.get(variable, str(port)) != str(port):
                problems.append(f"compose.yaml: {name} has {variable}={env[variable]}, not {port}")
        if _needs_redis(process) and "SLUICE_REDIS_URL" not in env:
            problems.append(f"compose.yaml: {name} uses Redis but has no SLUICE_REDIS_URL")
    for name in sorted(set(ours) - set(services.processes)):
        problems.append(f"compose.yaml: {name} runs the image but no service declares it")
    nginx = containers.get("nginx") or {}
    nginx_env = _env(nginx.get("environment"))
    needs = nginx.get("depends_on") or {}
    for service in services.public():
        address = f"{service.name}:{service.port}"
        variable = f"{service.env_prefix}_ADDR"
        if nginx_env.get(variable) != address:
            problems.append(
                f"compose.yaml: nginx has {variable}={nginx_env.get(variable)}, not {address}"
            )
        if service.name not in needs:
            problems.append(f"compose.yaml: nginx does not depend on {service.name}")
    return problems


def _needs_redis(process: Process) -> bool:
    if process.companion is not None:
        return process.companion.needs_redis
    return process.service.uses_redis


def _policies(documents: list[Mapping[str, Any]]) -> dict[str, tuple[set[str], set[int]]]:
    """Each NetworkPolicy's pods (by app.kubernetes.io/name): who may reach them, on what ports."""
    found: dict[str, tuple[set[str], set[int]]] = {}
    for doc in documents:
        if doc.get("kind") != "NetworkPolicy":
            continue
        target = doc["spec"].get("podSelector", {}).get("matchLabels", {})
        name = target.get("app.kubernetes.io/name")
        if name is None:
            continue
        peers, ports = found.setdefault(name, (set(), set()))
        for rule in doc["spec"].get("ingress") or []:
            for peer in rule.get("from") or []:
                label = peer.get("podSelector", {}).get("matchLabels", {})
                peers.add(str(label.get("app.kubernetes.io/name")))
            ports |= {int(p["port"]) for p in rule.get("ports") or [] if "port" in p}
    return found


def k8s_documents(base: Path) -> list[dict[str, Any]]:
    """Every document of the files ``base/kustomization.yaml`` lists."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = base / resource
        if path.is_file():
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def _pod(deployment: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    template = deployment["spec"]["template"]
    containers = template["spec"]["containers"]
    return template["metadata"], containers[0]


def k8s(documents: Iterable[Mapping[str, Any]], services: Registry) -> list[str]:
    """What the k8s base manifests get wrong about the declared processes."""
    problems: list[str] = []
    documents = list(documents)
    deployments = {d["metadata"]["name"]: d for d in documents if d.get("kind") == "Deployment"}
    ports = {
        d["metadata"]["name"]: [p["port"] for p in d["spec"].get("ports", [])]
        for d in documents
        if d.get("kind") == "Service"
    }
    ours = {
        name: d
        for name, d in deployments.items()
        if str(_pod(d)[1].get("image", "")).split(":")[0] == IMAGE
    }
    policies = _policies(documents)
    for name, process in services.processes.items():
        deployment = ours.get(name)
        if deployment is None:
            problems.append(f"k8s: no Deployment {name} (SLUICE_SERVICE={name})")
            continue
        metadata, container = _pod(deployment)
        env = _env(container.get("env"))
        if env.get("SLUICE_SERVICE") != name:
            problems.append(
                f"k8s: Deployment {name} runs SLUICE_SERVICE={env.get('SLUICE_SERVICE')}"
            )
        metrics = (
            process.companion.metrics_port if process.companion else process.service.metrics_port
        )
        annotated = str(metadata.get("annotations", {}).get("prometheus.io/port"))
        if annotated != str(metrics):
            problems.append(f"k8s: {name}'s prometheus.io/port is {annotated}, not {metrics}")
        _, allowed = policies.get(name, (set(), set()))
        if metrics not in allowed:
            problems.append(f"k8s: no NetworkPolicy lets Prometheus reach {name} on {metrics}")
        if _needs_redis(process) and name not in policies.get("redis", (set(), set()))[0]:
            problems.append(f"k8s: {name} uses Redis but allow-redis does not let it in")
        if process.companion is not None:
            variable = process.companion.port_variable
            if env.get(variable, str(metrics)) != str(metrics):
                problems.append(f"k8s: {name} has {variable}={env[variable]}, not {metrics}")
            continue
        port = process.service.port
        declared = [p.get("containerPort") for p in container.get("ports", [])]
        if port not in declared:
            problems.append(f"k8s: {name}'s containerPort is {declared}, not {port}")
        if env.get("SLUICE_BIND", f"0.0.0.0:{port}") != f"0.0.0.0:{port}":
            problems.append(f"k8s: {name} binds {env['SLUICE_BIND']}, not 0.0.0.0:{port}")
        if port not in ports.get(name, []):
            problems.append(f"k8s: Service {name} has ports {ports.get(name)}, not {port}")
    for name in sorted(set(ours) - set(services.processes)):
        problems.append(f"k8s: Deployment {name} runs the image but no service declares it")
    nginx = deployments.get("nginx")
    nginx_env = _env(_pod(nginx)[1].get("env")) if nginx else {}
    for service in services.public():
        address = f"{service.name}:{service.port}"
        variable = f"{service.env_prefix}_ADDR"
        if nginx_env.get(variable) != address:
            problems.append(f"k8s: nginx has {variable}={nginx_env.get(variable)}, not {address}")
    return problems


def check(root: Path, services: Registry) -> list[str]:
    """Both files' disagreements with the declarations, one line each."""
    document = yaml.safe_load((root / "compose.yaml").read_text())
    return compose(document, services) + k8s(k8s_documents(root / "k8s" / "base"), services)
