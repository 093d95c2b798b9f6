"""A rendered overlay (k8s/overlays/dev) played under ``podman kube play``, as far as podman 4.3
can: the harness bridges its gaps in a copy of the rendered YAML, never in the manifests.

podman 4.3, found by trying: it skips Namespace, Service, NetworkPolicy, HPA, PDB and
StatefulSet without a word; it misreads Secrets and lets ``envFrom`` override ``env``
(Kubernetes: ``env`` wins), so both become inline env in Kubernetes' order; it publishes
every ``containerPort`` on 0.0.0.0, so only nginx keeps one, on 127.0.0.1; it shares
``emptyDir`` volumes by name across pods, so each pod's get its own names; it runs no
probes, so :func:`run_probe` runs them; and a Service's name resolves only as a network
alias of the pod it selects, once that pod runs (Redis, then the services, then nginx).
"""

from __future__ import annotations

import base64
import copy
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .engine import Engine, run

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_KINDS = {
    "Namespace",
    "Service",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}
WORKLOADS = {"Deployment", "StatefulSet"}
# Start order: what others resolve at start first (nginx resolves every upstream at load).
ORDER = ("redis", "mock-upstream", "demo", "chat-proxy", "progress", "progress-worker", "log-tail")
LAST = "nginx"

Doc = dict[str, Any]


def render(overlay: str, key: str) -> list[Doc]:
    """``kubectl kustomize`` of a copy of k8s/ (and nginx/, which it reads), with a
    secrets.env holding ``key``."""
    with tempfile.TemporaryDirectory(prefix="sluice-kube-") as tmp:
        shutil.copytree(ROOT / "k8s", Path(tmp) / "k8s")
        shutil.copytree(ROOT / "nginx", Path(tmp) / "nginx")
        (Path(tmp) / "k8s" / "overlays" / overlay / "secrets.env").write_text(
            f"SLUICE_API_KEYS={key}\n"
        )
        out = run(["kubectl", "kustomize", str(Path(tmp) / "k8s" / "overlays" / overlay)]).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def source_values(doc: Doc) -> dict[str, str]:
    if doc["kind"] == "Secret":
        values = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
        values.update(doc.get("stringData") or {})
        return values
    return {k: str(v) for k, v in (doc.get("data") or {}).items()}


def inline_env(container: Doc, sources: dict[tuple[str, str], dict[str, str]]) -> list[Doc]:
    """envFrom first, env after and winning, as Kubernetes orders them."""
    merged: dict[str, str] = {}
    for ref in container.get("envFrom") or []:
        kind, spec = (
            ("ConfigMap", ref["configMapRef"])
            if "configMapRef" in ref
            else (
                "Secret",
                ref["secretRef"],
            )
        )
        merged.update(sources[(kind, spec["name"])])
    for item in container.get("env") or []:
        if "value" in item:
            merged[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]
            kind, spec = (
                ("ConfigMap", ref["configMapKeyRef"])
                if "configMapKeyRef" in ref
                else (
                    "Secret",
                    ref["secretKeyRef"],
                )
            )
            merged[item["name"]] = sources[(kind, spec["name"])][spec["key"]]
    return [{"name": name, "value": value} for name, value in merged.items()]


@dataclass
class Probe:
    container: str  # podman's container name: <pod>-<container>
    kind: str  # readiness | liveness
    command: list[str]


@dataclass
class Workload:
    name: str
    alias: str | None  # the Service that selects it
    pod: Doc
    configmaps: list[Doc]
    probes: list[Probe] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)


def probe_command(probe: Doc, ports: dict[str, int]) -> list[str]:
    if "exec" in probe:
        return [str(arg) for arg in probe["exec"]["command"]]
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = get["port"] if isinstance(get["port"], int) else ports[get["port"]]
        url = f"http://127.0.0.1:{port}{get.get('path', '/')}"
        script = (
            'if command -v wget >/dev/null; then exec wget -q -O /dev/null "$0"; fi; '
            'exec python -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=3)"'
            ' "$0"'
        )
        return ["sh", "-c", script, url]
    if "tcpSocket" in probe:
        port = probe["tcpSocket"]["port"]
        port = port if isinstance(port, int) else ports[port]
        return [
            "python",
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {port}), 3)",
        ]
    raise AssertionError(f"unknown probe {probe}")


def workloads(docs: list[Doc], nginx_port: int, images: dict[str, str]) -> list[Workload]:
    """One podman-playable Pod per Deployment/StatefulSet, in start order."""
    sources = {
        (d["kind"], d["metadata"]["name"]): source_values(d)
        for d in docs
        if d["kind"] in ("ConfigMap", "Secret")
    }
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    services = [d for d in docs if d["kind"] == "Service"]
    found = []
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            assert doc["kind"] in SKIPPED_KINDS | {"ConfigMap", "Secret"}, doc["kind"]
            continue
        name = doc["metadata"]["name"]
        template = copy.deepcopy(doc["spec"]["template"])
        labels = template["metadata"].get("labels", {})
        alias = next(
            (
                s["metadata"]["name"]
                for s in services
                if s["spec"].get("selector")
                and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
            ),
            None,
        )
        spec = template["spec"]
        renamed = {}
        used_configmaps = []
        for volume in spec.get("volumes") or []:
            if "emptyDir" in volume:
                renamed[volume["name"]] = f"{name}-{volume['name']}"
                volume["name"] = renamed[volume["name"]]
            if "configMap" in volume:
                used_configmaps.append(configmaps[volume["configMap"]["name"]])
        workload = Workload(name, alias, {}, used_configmaps)
        for container in spec["containers"]:
            ports = {
                p.get("name", str(p["containerPort"])): p["containerPort"]
                for p in container.get("ports") or []
            }
            container["env"] = inline_env(container, sources)
            container.pop("envFrom", None)
            container["image"] = images.get(container["image"], container["image"])
            if name == LAST:
                container["ports"] = [
                    {**p, "hostIP": "127.0.0.1", "hostPort": nginx_port}
                    for p in container.get("ports") or []
                    if p["containerPort"] == 8080
                ]
            else:
                container.pop("ports", None)
            for mount in container.get("volumeMounts") or []:
                mount["name"] = renamed.get(mount["name"], mount["name"])
            podman_name = f"{name}-{container['name']}"
            workload.containers.append(podman_name)
            for kind in ("readiness", "liveness"):
                probe = container.pop(f"{kind}Probe", None)
                if probe:
                    workload.probes.append(Probe(podman_name, kind, probe_command(probe, ports)))
        workload.pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }
        found.append(workload)
    rank = {n: i for i, n in enumerate((*ORDER, LAST))}
    return sorted(found, key=lambda w: rank.get(w.name, len(ORDER)))


def play(engine: Engine, workload: Workload, network: str, folder: Path) -> None:
    path = folder / f"{workload.name}.yaml"
    path.write_text(yaml.safe_dump_all([*workload.configmaps, workload.pod]))
    net = f"{network}:alias={workload.alias}" if workload.alias else network
    engine.command("kube", "play", "--network", net, str(path), timeout=300)


def run_probe(engine: Engine, probe: Probe) -> tuple[bool, str]:
    result = run(["podman", "exec", probe.container, *probe.command], engine.env, 30, check=False)
    return result.returncode == 0, result.stdout + result.stderr


def teardown(engine: Engine, played: list[Workload], folder: Path, network: str) -> None:
    for workload in reversed(played):
        path = folder / f"{workload.name}.yaml"
        if path.exists():
            engine.command("kube", "down", str(path), check=False, timeout=120)
        engine.command("pod", "rm", "-f", workload.name, check=False)
    for workload in played:
        for volume in workload.pod["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                engine.command("volume", "rm", "-f", volume["name"], check=False)
    engine.command("network", "rm", "-f", network, check=False)


def wait_ready(engine: Engine, workload: Workload, timeout: float = 90) -> float:
    """Until every container of the pod runs and its readiness probes pass; seconds taken."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        states = engine.command(
            "inspect", "--format", "{{.State.Status}}", *workload.containers, check=False
        ).split()
        if states == ["running"] * len(workload.containers):
            results = [run_probe(engine, p) for p in workload.probes if p.kind == "readiness"]
            if all(ok for ok, _ in results):
                return time.monotonic() - started
            last = "; ".join(out for ok, out in results if not ok)
        time.sleep(0.5)
    logs = [engine.command("logs", name, check=False) for name in workload.containers]
    raise TimeoutError(f"{workload.name} not ready in {timeout:.0f} s: {last}\n{logs}")


def play_all(
    engine: Engine, found: list[Workload], network: str, folder: Path
) -> tuple[list[Workload], dict[str, float]]:
    """Each pod in order, the next once the last is ready (its alias resolves then)."""
    played: list[Workload] = []
    took = {}
    engine.command("network", "create", network)
    try:
        for workload in found:
            played.append(workload)
            play(engine, workload, network, folder)
            took[workload.name] = round(wait_ready(engine, workload), 1)
    except BaseException:
        teardown(engine, played, folder, network)
        raise
    return played, took
