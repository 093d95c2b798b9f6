"""k8s/overlays/dev rendered and played under ``podman kube play`` (no control plane can be had
here): every workload starts and stays up with no restart, every probe passes, the pods get
their securityContext, nginx serves /healthz, /toy-stream and a chat stream, and nothing grows
while idle (log-tail once followed its own log: +124 KB per 5 s)."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from deploy.containers import kube
from deploy.containers.engine import Engine, podman_for
from deploy.containers.stack import free_port
from deploy.containers.standins import build_sluice, ensure_base, ensure_standins

from sluice.procfs import children, stat
from tests.containers.conftest import FIGURES

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]
KEY = "sk-e2e-kube-000000000000000000000000001"
SLUICE = "ghcr.io/example/sluice:0.1.0"  # what the dev overlay names (k8s/base images:)
IDLE_SECONDS = 20


@dataclass
class Played:
    engine: Engine
    workloads: list[kube.Workload]
    base: str


@pytest.fixture(scope="module")
def podman(engine: Engine) -> Iterator[Engine]:
    """kube play needs podman: the compose run's engine, or beside a Docker engine a podman of
    its own with the stand-ins and the image (installed when missing, as root; otherwise
    EngineUnavailable fails the tests with what to install: they never skip)."""
    if engine.kind == "podman":
        yield engine
        return
    with podman_for(ensure_base) as own:
        ensure_standins(own)
        FIGURES["kube_podman_image_build_s"] = round(build_sluice(own), 1)
        yield own


@pytest.fixture(scope="module")
def played(podman: Engine) -> Iterator[Played]:
    engine = podman
    assert engine.kind == "podman"
    FIGURES["kube_swept_dead_runs"] = len(kube.sweep_dead_runs(engine))
    docs = kube.render("dev", KEY)
    port = free_port()
    run = kube.new_run()
    found = kube.workloads(docs, port, {SLUICE: "localhost/sluice:local"}, run)
    assert {w.name for w in found} == {
        "redis",
        "mock-upstream",
        "demo",
        "chat-proxy",
        "progress",
        "progress-worker",
        "log-tail",
        "nginx",
    }
    assert all(w.pod_name == f"{run.id}-{w.name}" for w in found)
    folder = Path(tempfile.mkdtemp(prefix="sluice-kubeplay-"))
    started = time.monotonic()
    workloads, _ = kube.play_all(engine, found, run, folder)
    FIGURES["kube_play_to_ready_s"] = round(time.monotonic() - started, 1)
    try:
        yield Played(engine, workloads, f"http://127.0.0.1:{port}")
    finally:
        kube.teardown(engine, workloads, folder, run)
        shutil.rmtree(folder, ignore_errors=True)
        left = kube.run_objects(engine, run.id)
        assert left == {"pod": [], "container": [], "volume": [], "network": []}, left
        pods = engine.command("pod", "ps", "--format", "{{.Name}}", check=False).split()
        assert not {w.pod_name for w in workloads} & set(pods)


def leave_a_run(engine: Engine, run: kube.Run) -> None:
    """What a run leaves when it is SIGKILLed mid-play: its network, a pod, an emptyDir
    volume (labelled) and a ConfigMap's volume (podman's, unlabelled)."""
    engine.command("network", "create", *run.label_args(), run.id)
    engine.command("pod", "create", "--infra=false", *run.label_args(), "--name", f"{run.id}-redis")
    engine.command("volume", "create", *run.label_args(), f"{run.id}-redis-data")
    engine.command("volume", "create", f"{run.id}-nginx-templates-x1")


def test_a_dead_runs_leftovers_are_swept_and_nothing_else(podman: Engine) -> None:
    """Before a run: what a dead run (its owner gone) left is removed; a live concurrent
    run's objects and a user's pod named ``redis`` are not touched."""
    dead = kube.Run(f"{kube.RUN_PREFIX}{secrets.token_hex(4)}", "999999999:1")
    live = kube.new_run()
    pods = podman.command("pod", "ps", "--format", "{{.Name}}").split()
    user_pod = "redis"
    made_user_pod = user_pod not in pods
    try:
        if made_user_pod:
            podman.command("pod", "create", "--infra=false", "--name", user_pod)
        leave_a_run(podman, dead)
        leave_a_run(podman, live)
        swept = kube.sweep_dead_runs(podman)
        assert dead.id in swept and live.id not in swept, swept
        assert kube.run_objects(podman, dead.id) == {
            "pod": [],
            "container": [],
            "volume": [],
            "network": [],
        }
        kept = kube.run_objects(podman, live.id)
        assert kept["pod"] == [f"{live.id}-redis"]
        assert kept["network"] == [live.id]
        assert kept["volume"] == [f"{live.id}-nginx-templates-x1", f"{live.id}-redis-data"]
        assert user_pod in podman.command("pod", "ps", "--format", "{{.Name}}").split()
    finally:
        for run in (dead, live):
            kube.remove_run(podman, run.id, kube.run_objects(podman, run.id))
        if made_user_pod:
            podman.command("pod", "rm", "-f", user_pod, check=False)


def every_container(played: Played) -> list[str]:
    return [name for w in played.workloads for name in w.containers]


def test_running_services_resolve_from_hosts_not_dns(played: Played) -> None:
    """The harness's bridge for podman's DNS: the Services running before a pod started are
    in its /etc/hosts (hostAliases), so a dropped DNS query cannot fail a probe."""
    nginx = next(w for w in played.workloads if w.name == kube.LAST)
    hosts = played.engine.command("exec", nginx.containers[0], "cat", "/etc/hosts")
    for workload in played.workloads:
        if workload.alias and workload is not nginx:
            assert any(
                line.split()[1:2] == [workload.alias] for line in hosts.splitlines() if line
            ), (workload.alias, hosts)


def test_every_probe_passes(played: Played) -> None:
    """Each probe as the kubelet judges it (failed only after its failureThreshold failures in a
    row); a failure it recovered from is kept in the figures, not hidden."""
    failed = []
    recovered = []
    for workload in played.workloads:
        assert workload.probes, f"{workload.name} has no probes"
        for probe in workload.probes:
            ok, outputs = kube.probe_verdict(played.engine, probe)
            if not ok:
                failed.append((probe.container, probe.kind, outputs))
            elif outputs:
                recovered.append(f"{probe.container} {probe.kind}: {outputs[0][-300:]}")
    FIGURES["kube_probe_failures_recovered"] = json.dumps(recovered)
    assert failed == []


def test_nginx_serves_healthz_toy_stream_and_a_chat_stream(played: Played) -> None:
    assert httpx.get(f"{played.base}/healthz", timeout=10).json()["status"] == "ok"
    with httpx.stream("GET", f"{played.base}/toy-stream", timeout=30) as response:
        assert response.status_code == 200
        assert "End of stream." in response.read().decode()
    body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{played.base}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        text = response.read().decode()
    assert text.rstrip().endswith("data: [DONE]")
    assert text.count("data: {") > 1


def test_pods_get_their_security_context(played: Played) -> None:
    for workload in played.workloads:
        for container, spec in zip(
            workload.containers, workload.pod["spec"]["containers"], strict=True
        ):
            context = spec["securityContext"]
            out = played.engine.command(
                "exec",
                container,
                "sh",
                "-c",
                "id -u; grep CapEff /proc/self/status; touch /root-is-writable 2>/dev/null "
                "&& echo writable || echo read-only",
            ).split("\n")
            assert out[0] == str(context["runAsUser"]), container
            assert out[1].split()[1] == "0000000000000000", (container, out)  # drop: ALL
            assert out[2] == "read-only", container
            limit = played.engine.command(
                "inspect", container, "--format", "{{.HostConfig.Memory}}"
            ).strip()
            assert int(limit) > 0, f"{container}: no memory limit"


def cpu_seconds(played: Played, container: str) -> float:
    """The CPU time used so far by a container's processes (its init and every descendant:
    root podman's containers are this host's processes)."""
    pid = int(played.engine.command("inspect", container, "--format", "{{.State.Pid}}"))
    total, frontier = 0.0, [pid]
    while frontier:
        current = frontier.pop()
        info = stat(current)
        if info is not None:
            total += info.cpu_seconds
        frontier += children(current)
    return total


def sample(played: Played) -> dict[str, tuple[int, int, float]]:
    """Restart count, bytes in the container's writable volumes (emptyDirs) and CPU seconds
    used, each."""
    found = {}
    for workload in played.workloads:
        for container, spec in zip(
            workload.containers, workload.pod["spec"]["containers"], strict=True
        ):
            restarts = played.engine.command(
                "inspect", container, "--format", "{{.RestartCount}} {{.State.Status}}"
            ).split()
            assert restarts[1] == "running", container
            mounts = [
                m["mountPath"] for m in spec.get("volumeMounts") or [] if not m.get("readOnly")
            ]
            size = 0
            if mounts:
                out = played.engine.command("exec", container, "du", "-sb", *mounts, check=False)
                size = sum(int(line.split()[0]) for line in out.splitlines() if line.strip())
            found[container] = (int(restarts[0]), size, cpu_seconds(played, container))
    return found


def test_nothing_restarts_or_grows_while_idle(played: Played) -> None:
    before = sample(played)
    started = time.monotonic()
    time.sleep(IDLE_SECONDS)
    after = sample(played)
    took = time.monotonic() - started
    grown = {name: after[name][1] - before[name][1] for name in before}
    busy = {name: round((after[name][2] - before[name][2]) / took, 3) for name in before}
    FIGURES["kube_idle_growth_bytes"] = str(grown)
    FIGURES["kube_idle_cpu_share"] = str(busy)
    assert all(count == 0 for count, _, _ in after.values()), after
    # a few log lines at most (the probes' access lines): not a file that feeds itself
    assert all(delta < 16 * 1024 for delta in grown.values()), grown
    # Idle is idle: a process that wakes itself (log-tail following its own log burned 19-31%
    # of a core) shows here; heartbeats, probes and scrapes are a few percent at most.
    assert all(share < 0.10 for share in busy.values()), busy
