"""Prometheus configuration and rules: promtool checks, unit tests for every alert, no drift."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from sluice.registry import registry
from sluice_dev import prometheus, stack
from sluice_dev.project import Project
from tests.support.paths import ROOT

PROJECT = Project.at(ROOT)
PROM = PROJECT.prometheus_dir


def promtool(*args: str, cwd: Path = PROM) -> str:
    result = subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_rules_check_and_every_alert_is_unit_tested() -> None:
    assert "SUCCESS" in promtool("check", "rules", "rules/sluice.yml")
    assert "SUCCESS" in promtool("test", "rules", "tests/sluice.test.yml")
    rules = yaml.safe_load((PROM / "rules" / "sluice.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "tests" / "sluice.test.yml").read_text())
    firing = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert set(alerts) == firing
    for name, rule in alerts.items():
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["runbook"]) > 40, name


def test_compose_config_is_the_one_source_rendered(tmp_path: Path) -> None:
    compose = prometheus.compose_config(registry())
    assert (PROM / "prometheus.compose.yml").read_text() == compose
    assert "SUCCESS" in promtool("check", "config", "prometheus.compose.yml")


def test_make_run_writes_a_valid_local_config(tmp_path: Path) -> None:
    stack.prepare(tmp_path, {}, PROJECT)
    config = tmp_path / "prometheus" / "prometheus.yml"
    assert "SUCCESS" in promtool("check", "config", str(config), cwd=tmp_path)
    text = config.read_text()
    for service in registry():
        assert f"127.0.0.1:{service.port}" in text
    assert "prometheus: " in (tmp_path / "Procfile").read_text()


def test_k8s_flavour_matches_what_the_manifests_put_on_pods(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery, so this flavour is checked by
    its source and against the rendered pods: every annotation and label it keys on is set."""
    text = (PROM / "prometheus.k8s.yml").read_text()
    assert text == prometheus.k8s_config()
    config = yaml.safe_load(text)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "sluice"
    used = {s for rule in job["relabel_configs"] for s in rule["source_labels"]}
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    shutil.copytree(ROOT / "nginx", tmp_path / "nginx")
    for overlay in ("dev", "prod"):
        folder = tmp_path / "k8s" / "overlays" / overlay
        shutil.copy(folder / "secrets.env.example", folder / "secrets.env")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path / "k8s")], capture_output=True, text=True, check=True
    ).stdout
    pods = [
        d["spec"]["template"]["metadata"]
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] != "nginx"
    ]
    assert pods
    for pod in pods:
        notes, labels = pod["annotations"], pod["labels"]
        for source in used - {"__address__"}:
            key = source.removeprefix("__meta_kubernetes_pod_")
            if key.startswith("annotation_"):
                name = key.removeprefix("annotation_").replace("prometheus_io_", "prometheus.io/")
                assert name in notes, (pod["labels"], name)
            elif key.startswith("label_"):
                name = key.removeprefix("label_").replace(
                    "app_kubernetes_io_", "app.kubernetes.io/"
                )
                assert name.replace("_", "-") in labels or name in labels, name
