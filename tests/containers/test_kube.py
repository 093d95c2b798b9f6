"""k8s/overlays/dev rendered and played under ``podman kube play`` (no control plane can be had
here): every workload starts and stays up with no restart, every probe passes, the pods get
their securityContext, nginx serves /healthz, /toy-stream and a chat stream, and nothing grows
while idle (log-tail once followed its own log: +124 KB per 5 s)."""

from __future__ import annotations

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
from deploy.containers.engine import Engine
from deploy.containers.stack import free_port

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
def played(engine: Engine) -> Iterator[Played]:
    assert engine.kind == "podman", "kube play needs podman (Docker mode: run it with podman)"
    docs = kube.render("dev", KEY)
    port = free_port()
    found = kube.workloads(docs, port, {SLUICE: "localhost/sluice:local"})
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
    folder = Path(tempfile.mkdtemp(prefix="sluice-kubeplay-"))
    network = f"sluicekube{secrets.token_hex(4)}"
    started = time.monotonic()
    workloads, _ = kube.play_all(engine, found, network, folder)
    FIGURES["kube_play_to_ready_s"] = round(time.monotonic() - started, 1)
    try:
        yield Played(engine, workloads, f"http://127.0.0.1:{port}")
    finally:
        kube.teardown(engine, workloads, folder, network)
        shutil.rmtree(folder, ignore_errors=True)
        left = engine.command("pod", "ps", "--format", "{{.Name}}", check=False).split()
        assert not {w.name for w in workloads} & set(left)


def every_container(played: Played) -> list[str]:
    return [name for w in played.workloads for name in w.containers]


def test_every_probe_passes(played: Played) -> None:
    failed = []
    for workload in played.workloads:
        assert workload.probes, f"{workload.name} has no probes"
        for probe in workload.probes:
            ok, out = kube.run_probe(played.engine, probe)
            if not ok:
                failed.append((probe.container, probe.kind, out))
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


def sample(played: Played) -> dict[str, tuple[int, int]]:
    """Restart count and bytes in the container's writable volumes (emptyDirs), each."""
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
            found[container] = (int(restarts[0]), size)
    return found


def test_nothing_restarts_or_grows_while_idle(played: Played) -> None:
    before = sample(played)
    time.sleep(IDLE_SECONDS)
    after = sample(played)
    grown = {name: after[name][1] - before[name][1] for name in before}
    FIGURES["kube_idle_growth_bytes"] = str(grown)
    assert all(count == 0 for count, _ in after.values()), after
    # a few log lines at most (the probes' access lines): not a file that feeds itself
    assert all(delta < 16 * 1024 for delta in grown.values()), grown
