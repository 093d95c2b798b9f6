"""Dockerfile, compose.yaml and k8s/: real validators, then the promises, parsed.

No Docker engine or cluster exists here; what can be checked offline is: hadolint, the
compose spec schema and docker-compose's own parser, kustomize builds validated against
the Kubernetes schemas, and tests on the rendered objects.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice import devstack

ROOT = devstack.ROOT
BIN = Path(sys.executable).parent
DRAIN_WINDOW = 10
GRACEFUL = 15


def run(*argv: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repo's deploy files with the user-supplied secrets filled from examples."""
    work = tmp_path_factory.mktemp("deploy")
    for name in ("k8s", "nginx", "deploy"):
        shutil.copytree(ROOT / name, work / name)
    for name in ("compose.yaml", ".env.example"):
        shutil.copy(ROOT / name, work / name)
    shutil.copy(ROOT / ".env.example", work / ".env")
    for overlay in ("dev", "prod"):
        folder = work / "k8s" / "overlays" / overlay
        shutil.copy(folder / "secrets.env.example", folder / "secrets.env")
    return work


def kustomize(workdir: Path, target: str) -> list[dict[str, Any]]:
    rendered = run("kubectl", "kustomize", str(workdir / target))
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


@pytest.fixture(scope="module", params=["k8s", "k8s/overlays/prod"])
def rendered(request: pytest.FixtureRequest, workdir: Path) -> list[dict[str, Any]]:
    return kustomize(workdir, request.param)


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


# -- validators -------------------------------------------------------------------------
def test_hadolint_passes_the_dockerfile() -> None:
    run(str(BIN / "hadolint"), "Dockerfile")


def test_compose_matches_the_compose_spec_and_docker_compose_parses_it(workdir: Path) -> None:
    run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    run("docker-compose", "config", "-q", cwd=workdir)


@pytest.mark.parametrize("target", ["k8s", "k8s/overlays/dev", "k8s/overlays/prod"])
def test_every_overlay_renders_and_validates_strictly(workdir: Path, target: str) -> None:
    out = workdir / f"{target.replace('/', '_')}.yaml"
    out.write_text(run("kubectl", "kustomize", str(workdir / target)))
    report = run(str(BIN / "kubernetes-validate"), "--strict", str(out))
    assert "passed" in report


def test_the_servicemonitor_component_adds_monitors(workdir: Path) -> None:
    overlay = workdir / "k8s" / "overlays" / "with-monitors"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../dev]\ncomponents: [../../components/servicemonitor]\n"
    )
    kinds = {d["kind"] for d in kustomize(workdir, "k8s/overlays/with-monitors")}
    assert {"ServiceMonitor", "PodMonitor", "Deployment"} <= kinds


# -- the promises, on the rendered objects ----------------------------------------------
def test_every_container_is_non_root_read_only_with_probes(rendered: list[dict[str, Any]]) -> None:
    assert workloads(rendered)
    for workload in workloads(rendered):
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 1) != 0, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert "readinessProbe" in container, where
            assert "livenessProbe" in container, where
            assert "limits" in container["resources"], where


def test_grace_period_covers_prestop_and_drain(rendered: list[dict[str, Any]]) -> None:
    for workload in workloads(rendered):
        pod = workload["spec"]["template"]["spec"]
        if workload["metadata"]["name"] == "redis":
            continue
        prestop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert prestop[0] == "sleep"
        assert pod["terminationGracePeriodSeconds"] >= int(prestop[1]) + DRAIN_WINDOW + GRACEFUL


def test_app_probes_are_readyz_and_healthz(rendered: list[dict[str, Any]]) -> None:
    for workload in workloads(rendered):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        if "httpGet" in container["readinessProbe"] and workload["metadata"]["name"] != "nginx":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_no_image_floats(rendered: list[dict[str, Any]]) -> None:
    for workload in workloads(rendered):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], image
            assert not image.endswith(":latest"), image


def test_nginx_configmap_is_the_make_run_template(rendered: list[dict[str, Any]]) -> None:
    (configmap,) = [
        d
        for d in rendered
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nginx-templates")
    ]
    template = (ROOT / "nginx" / "templates" / "sluice.conf.template").read_text()
    assert configmap["data"] == {"sluice.conf.template": template}
    nginx = next(
        d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "nginx"
    )
    volumes = nginx["spec"]["template"]["spec"]["volumes"]
    assert {"name": "templates", "configMap": {"name": configmap["metadata"]["name"]}} in volumes
    placeholders = set(re.findall(r"\$\{(SLUICE_[A-Z_]+)\}", template)) - {"SLUICE_NGINX_PREFIX"}
    given = {e["name"] for e in nginx["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert placeholders <= given


def test_network_policies_cover_every_workload(rendered: list[dict[str, Any]]) -> None:
    policies = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies)
    selected = {
        p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        for p in policies
    }
    for workload in workloads(rendered):
        assert workload["metadata"]["name"] in selected, workload["metadata"]["name"]
    by_name = {p["metadata"]["name"]: p for p in policies}
    for service in ("demo", "chat-proxy", "progress", "log-tail"):
        sources = by_name[f"allow-{service}"]["spec"]["ingress"][0]["from"]
        names = {s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in sources}
        assert names == {"nginx", "prometheus"}, service
    redis_sources = by_name["allow-redis"]["spec"]["ingress"][0]["from"]
    assert "nginx" not in {
        s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in redis_sources
    }


def test_prod_uses_an_external_redis_and_an_ingress_that_does_not_buffer(workdir: Path) -> None:
    prod = kustomize(workdir, "k8s/overlays/prod")
    assert not [d for d in prod if d["metadata"]["name"] == "redis"]
    (ingress,) = [d for d in prod if d["kind"] == "Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    kinds = {d["kind"] for d in prod}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"} <= kinds
    dev = kustomize(workdir, "k8s")
    redis = sorted(d["kind"] for d in dev if d["metadata"]["name"] == "redis")
    assert redis == ["Service", "StatefulSet"]


# -- compose ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_compose_services_are_healthy_gated_and_drain(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
        image = service.get("image", "")
        assert not image.endswith(":latest"), name
        for condition in (service.get("depends_on") or {}).values():
            assert condition == {"condition": "service_healthy"}, name
    for name in ("nginx", "demo", "chat-proxy", "progress", "progress-worker", "log-tail"):
        grace = int(str(services[name]["stop_grace_period"]).rstrip("s"))
        assert grace > DRAIN_WINDOW + GRACEFUL - 5, name
    assert "./nginx/templates:/etc/nginx/templates:ro" in services["nginx"]["volumes"]
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


def test_compose_and_k8s_start_only_services_the_entrypoint_knows(
    compose: dict[str, Any], workdir: Path
) -> None:
    from sluice.serve import WORKER

    known = {*devstack.SERVICES, WORKER}
    in_compose = {
        s["environment"]["SLUICE_SERVICE"]
        for s in compose["services"].values()
        if "SLUICE_SERVICE" in (s.get("environment") or {})
    }
    assert in_compose == known
    in_k8s = set()
    for workload in workloads(kustomize(workdir, "k8s")):
        for env in workload["spec"]["template"]["spec"]["containers"][0].get("env", []):
            if env["name"] == "SLUICE_SERVICE":
                in_k8s.add(env["value"])
    assert in_k8s == known
