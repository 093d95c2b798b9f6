"""Prometheus configuration and rules: promtool checks, unit tests for every alert, no drift."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from sluice import devstack

PROM = devstack.PROMETHEUS_DIR


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
    assert (PROM / "prometheus.compose.yml").read_text() == devstack.compose_prometheus_config()
    assert "SUCCESS" in promtool("check", "config", "prometheus.compose.yml")


def test_make_run_writes_a_valid_local_config(tmp_path: Path) -> None:
    devstack.prepare(tmp_path, {})
    config = tmp_path / "prometheus" / "prometheus.yml"
    assert "SUCCESS" in promtool("check", "config", str(config), cwd=tmp_path)
    text = config.read_text()
    for service in devstack.SERVICES.values():
        assert f"127.0.0.1:{service.port}" in text
    assert "prometheus: " in (tmp_path / "Procfile").read_text()
