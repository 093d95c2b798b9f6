"""The container harness's own rules, without an engine: it fails with what to do when it
may not install podman, it tags stand-ins with the names the files use, and its kube
transform bridges podman's gaps the way Kubernetes behaves."""

from __future__ import annotations

import base64
import shutil
from typing import Any

import pytest
from deploy.containers import engine as engine_module
from deploy.containers import kube
from deploy.containers.engine import EngineUnavailable, install_missing, limit_candidates
from deploy.containers.standins import normalized, wanted_images


def test_without_root_and_without_podman_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setattr(engine_module.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(engine_module, "Path", lambda _: _Missing())
    with pytest.raises(EngineUnavailable, match="sudo apt-get install podman runc debootstrap"):
        install_missing(engine_module.PACKAGES)


class _Missing:
    def exists(self) -> bool:
        return False


def test_nothing_is_installed_when_everything_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(engine_module.os, "geteuid", lambda: 1000)
    install_missing(engine_module.PACKAGES)  # no EngineUnavailable, no apt-get


def test_limit_candidates_halve_from_the_hard_limit() -> None:
    assert limit_candidates(96365) == [96365, 48182, 24091, 12045, 6022]
    assert limit_candidates(1000) == [4096]  # below the floor: the floor alone


def test_stand_ins_carry_the_exact_names_compose_and_the_manifests_use() -> None:
    assert normalized("nginx:1.27.3-alpine") == "docker.io/library/nginx:1.27.3-alpine"
    assert normalized("prom/prometheus:v3.0.1") == "docker.io/prom/prometheus:v3.0.1"
    assert normalized("ghcr.io/example/sluice:0.1.0") == "ghcr.io/example/sluice:0.1.0"
    assert normalized("localhost/sluice-base:bookworm") == "localhost/sluice-base:bookworm"
    images = wanted_images()
    assert images["python"].startswith("docker.io/library/python:3.11")
    assert images["nginx-unprivileged"].startswith("docker.io/nginxinc/nginx-unprivileged:")
    assert list(images).index("nginx") < list(images).index("nginx-unprivileged")


def deployment(name: str, container: dict[str, Any], volumes: list[Any]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name}
    return {
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "volumes": volumes},
            }
        },
    }


def test_env_wins_over_env_from_and_secrets_are_decoded() -> None:
    secret = {
        "kind": "Secret",
        "metadata": {"name": "s"},
        "data": {"SLUICE_API_KEYS": base64.b64encode(b"sk-x").decode(), "B": "Yg=="},
    }
    config = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"A": "from-map", "B": "m"}}
    container = {
        "name": "app",
        "image": "sluice",
        "env": [{"name": "A", "value": "inline"}],
        "envFrom": [{"configMapRef": {"name": "c"}}, {"secretRef": {"name": "s"}}],
        "ports": [{"name": "http", "containerPort": 8001}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
    }
    docs = [config, secret, deployment("demo", container, [])]
    (workload,) = kube.workloads(docs, 18080, {"sluice": "localhost/sluice:local"})
    (spec,) = workload.pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in spec["env"]}
    assert env == {"A": "inline", "B": "b", "SLUICE_API_KEYS": "sk-x"}  # Kubernetes' order
    assert "envFrom" not in spec
    assert spec["image"] == "localhost/sluice:local"
    assert "ports" not in spec  # podman would publish it on 0.0.0.0
    (probe,) = workload.probes
    assert probe.kind == "readiness" and probe.command[-1] == "http://127.0.0.1:8001/readyz"


def test_empty_dirs_get_names_of_their_own_and_only_nginx_publishes_on_loopback() -> None:
    nginx = {
        "name": "nginx",
        "image": "nginx",
        "ports": [{"name": "http", "containerPort": 8080}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    demo = {"name": "demo", "image": "sluice", "volumeMounts": [{"name": "tmp", "mountPath": "/t"}]}
    docs = [
        deployment("nginx", nginx, [{"name": "tmp", "emptyDir": {}}]),
        deployment("demo", demo, [{"name": "tmp", "emptyDir": {}}]),
        {"kind": "Service", "metadata": {"name": "demo"}, "spec": {"selector": {}}},
    ]
    found = kube.workloads(docs, 18080, {})
    assert [w.name for w in found] == ["demo", "nginx"]  # nginx last: it resolves the rest
    volumes = [w.pod["spec"]["volumes"][0]["name"] for w in found]
    assert volumes == ["demo-tmp", "nginx-tmp"]
    assert found[1].pod["spec"]["containers"][0]["volumeMounts"][0]["name"] == "nginx-tmp"
    assert found[1].pod["spec"]["containers"][0]["ports"] == [
        {"name": "http", "containerPort": 8080, "hostIP": "127.0.0.1", "hostPort": 18080}
    ]


def test_an_unknown_kind_is_refused_not_skipped() -> None:
    with pytest.raises(AssertionError, match="CronJob"):
        kube.workloads([{"kind": "CronJob", "metadata": {"name": "x"}}], 1, {})
