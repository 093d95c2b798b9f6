"""Dockerfile, compose.yaml and k8s/: real validators, then the promises, parsed.

No Docker engine or cluster exists here; what can be checked offline is: hadolint, the
compose spec schema and docker-compose's own parser, kustomize builds validated against
the Kubernetes schemas, and tests on the rendered objects.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluice.registry import registry
from sluice.settings import ServerSettings
from sluice_dev import check
from tests.support.paths import ROOT

BIN = Path(sys.executable).parent
DRAIN_WINDOW = 10
GRACEFUL = 15
KEY = "sk-test-0123456789abcdef"


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
    # as the README says: .env from the example, with a key of one's own (compose needs one)
    example = (ROOT / ".env.example").read_text()
    (work / ".env").write_text(
        example.replace("\nSLUICE_API_KEYS=\n", f"\nSLUICE_API_KEYS={KEY}\n")
    )
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


@pytest.mark.parametrize(
    "target", ["k8s", "k8s/overlays/dev", "k8s/overlays/prod", "k8s/examples/vllm-fleet"]
)
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


def test_nginx_serves_the_consoles_files_from_a_configmap_of_the_tree(
    rendered: list[dict[str, Any]],
) -> None:
    (configmap,) = [
        d
        for d in rendered
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nginx-console")
    ]
    folder = ROOT / "nginx" / "console"
    assert configmap["data"] == {f.name: f.read_text() for f in sorted(folder.iterdir())}
    nginx = next(
        d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "nginx"
    )
    spec = nginx["spec"]["template"]["spec"]
    assert {"name": "console", "configMap": {"name": configmap["metadata"]["name"]}} in spec[
        "volumes"
    ]
    (container,) = spec["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["console"]["mountPath"] == env["SLUICE_CONSOLE_ROOT"]
    assert mounts["console"]["readOnly"] is True


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
    known = set(registry().processes)
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


# -- a key of one's own; settings scoped to one service (issue 13, items 20 and 23) ----------
def settings_of(env: dict[str, str]) -> Any:
    """The settings a container with ``env`` gets, through the image's entrypoint."""
    from sluice.serve import command

    _, extra = command(env)
    path = registry().process(env["SLUICE_SERVICE"]).service.settings
    with check.environment({**env, **extra}):
        return check.settings_class(path)()


def compose_project(tmp_path: Path, env_file: str) -> Path:
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / ".env").write_text(env_file)
    return tmp_path


def test_compose_refuses_to_start_without_a_key_of_ones_own(tmp_path: Path) -> None:
    project = compose_project(tmp_path, (ROOT / ".env.example").read_text())  # as copied
    result = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "set SLUICE_API_KEYS in .env (see .env.example)" in result.stderr
    assert "sk-change-me" not in (ROOT / ".env.example").read_text()  # no placeholder to keep


def test_a_scoped_setting_reaches_only_its_service_in_compose(tmp_path: Path) -> None:
    env_file = f"SLUICE_API_KEYS={KEY}\nSLUICE_CHAT_PROXY__PUBLIC_ROUTES=\nSLUICE_DEMO__WORKERS=3\n"
    project = compose_project(tmp_path, env_file)
    rendered = yaml.safe_load(run("docker-compose", "config", cwd=project))
    found = {}
    for service in rendered["services"].values():
        env = {
            k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()
        }
        if "SLUICE_SERVICE" in env:
            found[env["SLUICE_SERVICE"]] = (env, settings_of(env))
    assert found["chat-proxy"][1].public_routes == ""
    for name in ("demo", "progress", "progress-worker", "log-tail", "mock-upstream"):
        assert found[name][1].public_routes is None, name
    with check.environment({**found["demo"][0], "SLUICE_SERVICE_NAME": "demo"}):
        assert ServerSettings().workers == 3  # gunicorn's settings are scoped too
    with check.environment({**found["chat-proxy"][0], "SLUICE_SERVICE_NAME": "chat-proxy"}):
        assert ServerSettings().workers == 2
    for name in ("demo", "chat-proxy", "progress", "progress-worker", "log-tail"):
        assert found[name][0]["SLUICE_API_KEYS"] == KEY, name


def test_a_scoped_setting_reaches_only_its_service_in_k8s(workdir: Path) -> None:
    overlay = workdir / "k8s" / "overlays" / "scoped"
    overlay.mkdir(exist_ok=True)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../dev]\n"
        "configMapGenerator:\n  - name: sluice-config\n    behavior: merge\n"
        "    literals: [SLUICE_CHAT_PROXY__PUBLIC_ROUTES=]\n"
    )
    docs = kustomize(workdir, "k8s/overlays/scoped")
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    found = {}
    for workload in workloads(docs):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(maps[source["configMapRef"]["name"]])
            if "secretRef" in source:
                env.update(secrets[source["secretRef"]["name"]])
        env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
        if "SLUICE_SERVICE" in env:
            found[env["SLUICE_SERVICE"]] = settings_of(env)
    assert found["chat-proxy"].public_routes == ""
    for name in ("demo", "progress", "progress-worker", "log-tail", "mock-upstream"):
        assert found[name].public_routes is None, name
