"""A rendered overlay (k8s/overlays/dev) played under ``podman kube play``, as far as podman 4.3
can: the harness bridges its gaps in a copy of the rendered YAML, never in the manifests.

podman 4.3, found by trying: it skips Namespace, Service, NetworkPolicy, HPA, PDB and
StatefulSet without a word; it misreads Secrets and lets ``envFrom`` override ``env``
(Kubernetes: ``env`` wins), so both become inline env in Kubernetes' order; it publishes
every ``containerPort`` on 0.0.0.0, so only nginx keeps one, on 127.0.0.1; it shares
``emptyDir`` volumes by name across pods, so each pod's get its own names; it makes a
volume of each ``configMap`` one, named as the ConfigMap, and ``kube down`` leaves it; it
runs no probes, so :func:`run_probe` runs them; and a Service's name resolves only as a
network alias of the pod it selects, once that pod runs (Redis, then the services, then nginx).

Every pod, container, volume and the network carry the run's id: as the prefix of their
names and as a label (with the pid that owns the run). Teardown removes by label and by the
exact names, so a user's pod named ``redis`` or a concurrent run is never touched; a run
whose owner died (SIGKILL) is swept by :func:`sweep_dead_runs` before the next one.
"""

from __future__ import annotations

import base64
import copy
import os
import secrets
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
RUN_LABEL = "io.sluice.kube-run"  # the run's id, the prefix of every name it makes
OWNER_LABEL = "io.sluice.kube-owner"  # pid and start time of the process that made it
RUN_PREFIX = "sluicekube"


def process_owner(pid: int) -> str | None:
    """``pid:start-time`` (clock ticks after boot, /proc/PID/stat field 22): names one process
    for good, a reused pid included; None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{pid}:{fields[19]}"


def owner_alive(owner: str) -> bool:
    pid, _, _ = owner.partition(":")
    return pid.isdigit() and process_owner(int(pid)) == owner


@dataclass(frozen=True)
class Run:
    id: str
    owner: str

    @property
    def labels(self) -> dict[str, str]:
        return {RUN_LABEL: self.id, OWNER_LABEL: self.owner}

    def label_args(self) -> list[str]:
        return [arg for k, v in self.labels.items() for arg in ("--label", f"{k}={v}")]


def new_run() -> Run:
    owner = process_owner(os.getpid())
    assert owner is not None, "/proc/self/stat is unreadable"
    return Run(f"{RUN_PREFIX}{secrets.token_hex(4)}", owner)


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
    failure_threshold: int = 3  # Kubernetes' defaults
    period: float = 10.0


@dataclass
class Workload:
    name: str  # the manifest's name
    pod_name: str  # podman's: the run's id, then the name
    alias: str | None  # the Service that selects it
    pod: Doc
    configmaps: list[Doc]
    probes: list[Probe] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    def volumes(self) -> list[str]:
        """The volumes podman makes for the pod (emptyDirs, and one per ConfigMap)."""
        found = [v["name"] for v in self.pod["spec"].get("volumes") or [] if "emptyDir" in v]
        return found + [doc["metadata"]["name"] for doc in self.configmaps]


def probe_command(probe: Doc, ports: dict[str, int]) -> list[str]:
    if "exec" in probe:
        return [str(arg) for arg in probe["exec"]["command"]]
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = get["port"] if isinstance(get["port"], int) else ports[get["port"]]
        url = f"http://127.0.0.1:{port}{get.get('path', '/')}"
        script = (
            'if command -v wget >/dev/null; then exec wget -q -O /dev/null "$0"; fi; '
            'exec python -c "import sys, urllib.request as u, urllib.error as e\n'
            "try: u.urlopen(sys.argv[1], timeout=3)\n"
            'except e.HTTPError as x: sys.exit(f\'{x.code} {x.read()[:300]!r}\')" "$0"'
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


def workloads(docs: list[Doc], nginx_port: int, images: dict[str, str], run: Run) -> list[Workload]:
    """One podman-playable Pod per Deployment/StatefulSet, in start order, every name podman
    makes from it prefixed with ``run.id`` and labelled with ``run``."""
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
        pod_name = f"{run.id}-{name}"
        renamed = {}
        used_configmaps = []
        for volume in spec.get("volumes") or []:
            if "emptyDir" in volume:
                renamed[volume["name"]] = f"{pod_name}-{volume['name']}"
                volume["name"] = renamed[volume["name"]]
            if "configMap" in volume:
                configmap = copy.deepcopy(configmaps[volume["configMap"]["name"]])
                configmap["metadata"]["name"] = f"{run.id}-{configmap['metadata']['name']}"
                configmap["metadata"]["labels"] = {
                    **(configmap["metadata"].get("labels") or {}),
                    **run.labels,
                }
                volume["configMap"]["name"] = configmap["metadata"]["name"]
                used_configmaps.append(configmap)
        workload = Workload(name, pod_name, alias, {}, used_configmaps)
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
            podman_name = f"{pod_name}-{container['name']}"
            workload.containers.append(podman_name)
            for kind in ("readiness", "liveness"):
                probe = container.pop(f"{kind}Probe", None)
                if probe:
                    workload.probes.append(
                        Probe(
                            podman_name,
                            kind,
                            probe_command(probe, ports),
                            int(probe.get("failureThreshold", 3)),
                            float(probe.get("periodSeconds", 10)),
                        )
                    )
        workload.pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "labels": {**labels, **run.labels}},
            "spec": spec,
        }
        found.append(workload)
    rank = {n: i for i, n in enumerate((*ORDER, LAST))}
    return sorted(found, key=lambda w: rank.get(w.name, len(ORDER)))


def address_of(engine: Engine, pod: str, network: str) -> str:
    """The pod's address on ``network`` (its infra container's: the pod's network)."""
    infra = engine.command("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").strip()
    template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return engine.command("inspect", infra, "--format", template).strip()


def add_host_aliases(workload: Workload, known: dict[str, str]) -> None:
    """The Services already running, as ``hostAliases`` (``/etc/hosts``): podman's DNS
    (aardvark-dns) drops a query now and then, and glibc retries only after 5 s, past every
    connect timeout (seen: Redis unreachable from two pods for 10 s). A cluster's DNS is not
    the thing under test here; names of pods not yet running still go through DNS."""
    if known:
        workload.pod["spec"]["hostAliases"] = [
            {"ip": ip, "hostnames": [alias]} for alias, ip in sorted(known.items())
        ]


def play(engine: Engine, workload: Workload, run: Run, network: str, folder: Path) -> None:
    path = folder / f"{workload.pod_name}.yaml"
    path.write_text(yaml.safe_dump_all([*workload.configmaps, workload.pod]))
    for volume in workload.pod["spec"].get("volumes") or []:
        if "emptyDir" in volume:  # made here to carry the label (podman uses it as it is)
            engine.command("volume", "create", *run.label_args(), volume["name"])
    net = f"{network}:alias={workload.alias}" if workload.alias else network
    engine.command("kube", "play", "--network", net, str(path), timeout=300)


def run_probe(engine: Engine, probe: Probe) -> tuple[bool, str]:
    result = run(["podman", "exec", probe.container, *probe.command], engine.env, 30, check=False)
    return result.returncode == 0, result.stdout + result.stderr


def probe_verdict(engine: Engine, probe: Probe, max_period: float = 5.0) -> tuple[bool, list[str]]:
    """As the kubelet judges it: failed only after ``failure_threshold`` failures in a row,
    ``period`` apart (at most ``max_period`` here); passed at the first success. The
    failures' output, each (a passing probe may have failed before)."""
    failures: list[str] = []
    for attempt in range(max(1, probe.failure_threshold)):
        if attempt:
            time.sleep(min(probe.period, max_period))
        ok, out = run_probe(engine, probe)
        if ok:
            return True, failures
        failures.append(out.strip())
    return False, failures


def labelled(engine: Engine, kind: str, label: str) -> list[str]:
    """Names of podman's ``kind`` objects (pod, container, volume, network) with ``label``
    (``key`` or ``key=value``)."""
    args = {
        "pod": ["pod", "ps", "--format", "{{.Name}}"],
        "container": ["ps", "-a", "--format", "{{.Names}}"],
        "volume": ["volume", "ls", "--format", "{{.Name}}"],
        "network": ["network", "ls", "--format", "{{.Name}}"],
    }[kind]
    out = engine.command(*args, "--filter", f"label={label}", check=False)
    return [line.strip() for line in out.splitlines() if line.strip()]


def remove_run(engine: Engine, run_id: str, names: dict[str, list[str]]) -> None:
    """Everything labelled with ``run_id``, and the exact ``names`` (kind -> names) besides."""
    label = f"{RUN_LABEL}={run_id}"
    pods = sorted({*labelled(engine, "pod", label), *names.get("pod", [])})
    if pods:
        engine.command("pod", "rm", "-f", *pods, check=False, timeout=120)
    containers = labelled(engine, "container", label)
    if containers:
        engine.command("rm", "-f", "-t", "0", *containers, check=False, timeout=120)
    volumes = sorted({*labelled(engine, "volume", label), *names.get("volume", [])})
    for volume in volumes:  # one by one: a name that is not there fails alone
        engine.command("volume", "rm", "-f", volume, check=False)
    networks = sorted({*labelled(engine, "network", label), *names.get("network", [])})
    for network in networks:
        engine.command("network", "rm", "-f", network, check=False)


def run_objects(engine: Engine, run_id: str) -> dict[str, list[str]]:
    """What is left of ``run_id``: by label, and volumes by the name prefix (podman makes the
    ConfigMaps' volumes without our label)."""
    found = {
        kind: labelled(engine, kind, f"{RUN_LABEL}={run_id}")
        for kind in ("pod", "container", "volume", "network")
    }
    every_volume = engine.command("volume", "ls", "--format", "{{.Name}}", check=False).split()
    prefixed = (v for v in every_volume if v.startswith(f"{run_id}-"))
    found["volume"] = sorted({*found["volume"], *prefixed})
    return found


def sweep_dead_runs(engine: Engine) -> list[str]:
    """Remove what earlier runs left whose owning process is gone (a SIGKILLed run); a live
    run's objects, and anything without our label, are left alone. The run ids swept."""
    owners: dict[str, str] = {}
    # every run makes its network first and removes it last; its pods carry the owner too
    for kind in ("network", "pod"):
        for name in labelled(engine, kind, RUN_LABEL):
            labels = engine.command(
                kind,
                "inspect",
                "--format",
                f'{{{{index .Labels "{RUN_LABEL}"}}}} {{{{index .Labels "{OWNER_LABEL}"}}}}',
                name,
                check=False,
            ).split()
            if len(labels) == 2 and labels[0].startswith(RUN_PREFIX):
                owners[labels[0]] = labels[1]
    dead = sorted(run_id for run_id, owner in owners.items() if not owner_alive(owner))
    for run_id in dead:
        remove_run(engine, run_id, run_objects(engine, run_id))
    return dead


def teardown(engine: Engine, played: list[Workload], folder: Path, run: Run) -> None:
    for workload in reversed(played):
        path = folder / f"{workload.pod_name}.yaml"
        if path.exists():
            engine.command("kube", "down", str(path), check=False, timeout=120)
    left = run_objects(engine, run.id)
    names = {
        "pod": [w.pod_name for w in played] + left["pod"],
        "volume": [v for w in played for v in w.volumes()] + left["volume"],
        "network": [run.id],
    }
    remove_run(engine, run.id, names)


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
    engine: Engine, found: list[Workload], run: Run, folder: Path
) -> tuple[list[Workload], dict[str, float]]:
    """Each pod in order, the next once the last is ready (its alias resolves then), on a
    network of the run's own (named by its id)."""
    played: list[Workload] = []
    took = {}
    known: dict[str, str] = {}  # alias -> address of each pod running already
    engine.command("network", "create", *run.label_args(), run.id)
    try:
        for workload in found:
            played.append(workload)
            add_host_aliases(workload, known)
            play(engine, workload, run, run.id, folder)
            took[workload.name] = round(wait_ready(engine, workload), 1)
            if workload.alias:
                known[workload.alias] = address_of(engine, workload.pod_name, run.id)
    except BaseException:
        teardown(engine, played, folder, run)
        raise
    return played, took
