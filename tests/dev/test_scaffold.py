"""sluice_dev.scaffold (make new-service): what it refuses, writing nothing, and the compose
and k8s entries it writes agreeing with the new declaration. The whole path, generated and run
behind nginx, is tests/e2e/test_new_service.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sluice.registry import Registry, Service, registry
from sluice_dev import drift, scaffold
from sluice_dev.project import Project
from tests.support.paths import ROOT


@pytest.fixture
def project(tmp_path: Path) -> Project:
    for name in ("nginx", "deploy", "k8s"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    return Project.at(tmp_path)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("name", "port", "says"),
    [
        ("demo", None, "already declared"),
        ("progress-worker", None, "already declared"),
        ("Price_Feed", None, "lower-case words"),
        ("price feed", None, "lower-case words"),
        ("../etc", None, "lower-case words"),
        ("nginx", None, "not one of"),
        ("redis", None, "not one of"),
        ("price-feed", 8001, "port 8001 is already declared"),
        ("price-feed", 8013, "port 8013 is already declared"),
        ("auth", None, "not one of"),
    ],
)
def test_it_refuses_and_writes_nothing(
    project: Project, name: str, port: int | None, says: str
) -> None:
    before = files(project.root)
    with pytest.raises(SystemExit, match=says):
        scaffold.create(project, name, port)
    assert files(project.root) == before


def test_a_name_whose_route_is_taken_is_refused(project: Project) -> None:
    before = files(project.root)
    with pytest.raises(SystemExit, match="route '/v1/' is"):
        scaffold.create(project, "v1")  # chat-proxy serves /v1/
    assert files(project.root) == before


def test_the_next_free_port_skips_every_declared_one() -> None:
    taken = {s.port for s in registry()} | {
        c.metrics_port for s in registry() for c in s.companions
    }
    port = scaffold.free_port(registry())
    assert port not in taken and port >= scaffold.FIRST_PORT
    assert all(p in taken for p in range(scaffold.FIRST_PORT, port))


def test_its_compose_and_k8s_entries_agree_with_its_declaration(project: Project) -> None:
    values = {
        "name": "price-feed",
        "package": "price_feed",
        "port": "8105",
        "Class": "PriceFeed",
        "PREFIX": "SLUICE_PRICE_FEED",
    }
    compose = scaffold.add_to_compose((project.root / "compose.yaml").read_text(), values)
    for path, text in scaffold.k8s_entries(project.root, values).items():
        path.write_text(text)
    declared = Service(
        name="price-feed",
        app="sluice_services.price_feed.app:create_app",
        settings="sluice_services.price_feed.settings:PriceFeedSettings",
        port=8105,
        routes=("/price-feed/",),
    )
    with_it = Registry([*registry(), declared])
    assert drift.compose(yaml.safe_load(compose), with_it) == []
    assert drift.k8s(drift.k8s_documents(project.root / "k8s" / "base"), with_it) == []
    # and without the declaration, the same files are drift
    assert drift.compose(yaml.safe_load(compose), registry()) == [
        "compose.yaml: price-feed runs the image but no service declares it"
    ]
    policies = (project.root / "k8s" / "base" / "networkpolicies.yaml").read_text()
    redis = next(
        p for p in yaml.safe_load_all(policies) if p and p["metadata"]["name"] == "allow-redis"
    )
    clients = [f["podSelector"]["matchLabels"] for f in redis["spec"]["ingress"][0]["from"]]
    assert {"app.kubernetes.io/name": "price-feed"} in clients


def test_a_template_placeholder_left_unfilled_is_an_error() -> None:
    with pytest.raises(ValueError, match="unfilled placeholder"):
        scaffold.fill("name: @@name@@ port: @@port@@", {"name": "x"})


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda root: (root / "k8s/base/nginx.yaml").unlink(), "no k8s/base/nginx.yaml"),
        (
            lambda root: (root / "k8s/base/networkpolicies.yaml").write_text("kind: List\n"),
            "no allow-redis policy",
        ),
        (
            lambda root: (root / "compose.yaml").write_text("services: {}\n"),
            "compose.yaml has no redis service",
        ),
    ],
)
def test_files_not_as_expected_stop_it_before_anything_is_written(
    project: Project, spoil: Callable[[Path], object], says: str
) -> None:
    spoil(project.root)
    before = files(project.root)
    with pytest.raises(SystemExit, match=says):
        scaffold.create(project, "price-feed")
    assert files(project.root) == before


def test_a_service_that_does_not_import_as_declared_is_taken_back(project: Project) -> None:
    """Written, then not found where it was written (this project's services/ is not on the
    path of this process): every file is restored, every folder it made is gone."""
    before = files(project.root)
    with pytest.raises(SystemExit, match="is not what was declared here"):
        scaffold.create(project, "price-feed")
    assert files(project.root) == before
    assert not (project.root / "services").exists() and not (project.root / "tests").exists()
