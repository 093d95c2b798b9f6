"""compose.yaml, k8s/base and the generated files agree with the services' declarations,
and each check fails when a file drifts: a service, port, route or metrics port missing or
different (sluice_dev.drift, sluice_dev.sync)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.registry import registry
from sluice_dev import drift, sync
from sluice_dev.project import Project
from tests.support.paths import ROOT

PROJECT = Project.at(ROOT)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def k8s() -> list[dict[str, Any]]:
    return drift.k8s_documents(ROOT / "k8s" / "base")


def test_the_shipped_files_agree_with_the_declarations() -> None:
    assert sync.stale(PROJECT, registry()) == []
    assert drift.check(ROOT, registry()) == []


def test_make_sync_check_says_so_and_fails_on_drift(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sluice_dev", "--project-dir", str(tmp_path), "sync"]
    for name in ("nginx", "deploy", "k8s"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    ok = subprocess.run([*command, "--check"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    template = tmp_path / "nginx" / "templates" / "sluice.conf.template"
    template.write_text(
        template.read_text().replace("location = /chat-stream {", "location = /x {")
    )
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(compose_file.read_text().replace("0.0.0.0:8003", "0.0.0.0:8033"))
    bad = subprocess.run([*command, "--check"], capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        "nginx/templates/sluice.conf.template differs from the declarations (make sync)",
        "compose.yaml: progress binds 0.0.0.0:8033, not 0.0.0.0:8003",
    ]
    wrote = subprocess.run(command, capture_output=True, text=True, check=False)
    assert wrote.stdout == "wrote nginx/templates/sluice.conf.template\n", wrote.stderr
    assert template.read_text() == (ROOT / "nginx/templates/sluice.conf.template").read_text()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda d: d["services"].pop("log-tail"),
            "compose.yaml: no log-tail service (SLUICE_SERVICE=log-tail)",
        ),
        (
            lambda d: d["services"].pop("progress-worker"),
            "compose.yaml: no progress-worker service (SLUICE_SERVICE=progress-worker)",
        ),
        (
            lambda d: d["services"]["demo"]["environment"].update(SLUICE_BIND="0.0.0.0:9001"),
            "compose.yaml: demo binds 0.0.0.0:9001, not 0.0.0.0:8001",
        ),
        (
            lambda d: d["services"]["progress-worker"]["environment"].update(
                SLUICE_PROGRESS_WORKER_METRICS_PORT="9013"
            ),
            "compose.yaml: progress-worker has SLUICE_PROGRESS_WORKER_METRICS_PORT=9013, not 8013",
        ),
        (
            lambda d: d["services"]["demo"]["environment"].update(SLUICE_SERVICE="dem0"),
            "compose.yaml: demo runs SLUICE_SERVICE=dem0",
        ),
        (
            lambda d: d["services"]["nginx"]["environment"].pop("SLUICE_CHAT_PROXY_ADDR"),
            "compose.yaml: nginx has SLUICE_CHAT_PROXY_ADDR=None, not chat-proxy:8002",
        ),
        (
            lambda d: d["services"]["nginx"]["depends_on"].pop("progress"),
            "compose.yaml: nginx does not depend on progress",
        ),
        (
            lambda d: d["services"].update(stray=copy.deepcopy(d["services"]["demo"])),
            "compose.yaml: stray runs the image but no service declares it",
        ),
        (
            lambda d: d["services"]["progress"]["environment"].pop("SLUICE_REDIS_URL"),
            "compose.yaml: progress uses Redis but has no SLUICE_REDIS_URL",
        ),
    ],
)
def test_compose_drift_is_caught(change: Any, says: str) -> None:
    document = compose()
    change(document)
    assert says in drift.compose(document, registry())


def deployment(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def container(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found: dict[str, Any] = deployment(documents, name)["spec"]["template"]["spec"]["containers"][0]
    return found


def policy(documents: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        d for d in documents if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == name
    )
    return found


def set_env(documents: list[dict[str, Any]], name: str, variable: str, value: str) -> None:
    for item in container(documents, name)["env"]:
        if item["name"] == variable:
            item["value"] = value


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda d: d.remove(deployment(d, "log-tail")),
            "k8s: no Deployment log-tail (SLUICE_SERVICE=log-tail)",
        ),
        (
            lambda d: container(d, "demo")["ports"][0].update(containerPort=9001),
            "k8s: demo's containerPort is [9001], not 8001",
        ),
        (
            lambda d: deployment(d, "progress-worker")["spec"]["template"]["metadata"][
                "annotations"
            ].update({"prometheus.io/port": "9013"}),
            "k8s: progress-worker's prometheus.io/port is 9013, not 8013",
        ),
        (
            lambda d: set_env(d, "chat-proxy", "SLUICE_BIND", "0.0.0.0:9002"),
            "k8s: chat-proxy binds 0.0.0.0:9002, not 0.0.0.0:8002",
        ),
        (
            lambda d: set_env(d, "nginx", "SLUICE_LOG_TAIL_ADDR", "log-tail:9004"),
            "k8s: nginx has SLUICE_LOG_TAIL_ADDR=log-tail:9004, not log-tail:8004",
        ),
        (
            lambda d: next(
                s for s in d if s["kind"] == "Service" and s["metadata"]["name"] == "demo"
            )["spec"]["ports"][0].update(port=80),
            "k8s: Service demo has ports [80], not 8001",
        ),
        (
            lambda d: policy(d, "allow-demo")["spec"]["ingress"][0]["ports"][0].update(port=9001),
            "k8s: no NetworkPolicy lets Prometheus reach demo on 8001",
        ),
        (
            lambda d: policy(d, "allow-redis")["spec"]["ingress"][0]["from"].pop(2),
            "k8s: progress uses Redis but allow-redis does not let it in",
        ),
        (
            lambda d: container(d, "progress-worker")["env"].append(
                {"name": "SLUICE_PROGRESS_WORKER_METRICS_PORT", "value": "9013"}
            ),
            "k8s: progress-worker has SLUICE_PROGRESS_WORKER_METRICS_PORT=9013, not 8013",
        ),
    ],
)
def test_k8s_drift_is_caught(change: Any, says: str) -> None:
    documents = k8s()
    change(documents)
    assert says in drift.k8s(documents, registry())
