"""The dev tool with the core installed as a package, not run from a source checkout: it
works on the project it is pointed at (nginx/, deploy/ there), and says so when it is not
pointed at one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target``: the wheel's files, nothing of the checkout."""
    source = tmp_path_factory.mktemp("source")  # a build writes build/: not in the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("services", "dev"):
        ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    target = tmp_path_factory.mktemp("installed")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    done = subprocess.run(
        [*pip, "--disable-pip-version-check", str(source)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def python(installed: Path, code: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run(
        [sys.executable, *code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_package_holds_the_dev_tool_and_its_templates(installed: Path) -> None:
    assert (installed / "sluice_dev" / "templates" / "routes.py.tmpl").is_file()
    found = python(
        installed,
        [
            "-c",
            "import sluice, sluice_dev; from sluice.registry import registry;"
            " print(sluice.__file__, sluice_dev.__file__, sorted(registry().processes))",
        ],
        installed.parent,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.count(str(installed)) == 2, found.stdout  # not the checkout's
    assert "'progress-worker'" in found.stdout


def test_make_run_prepares_the_project_it_is_pointed_at(installed: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = ["-m", "sluice_dev", "--project-dir", str(ROOT), "prepare", "--run-dir", str(run_dir)]
    done = python(installed, command, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    procfile = (run_dir / "Procfile").read_text()
    assert f"-c {ROOT / 'deploy' / 'gunicorn.conf.py'}" in procfile  # the project's, by path
    assert "location = /chat-stream {" in (run_dir / "nginx" / "conf.d" / "sluice.conf").read_text()


def test_outside_a_project_it_says_what_is_missing(installed: Path, tmp_path: Path) -> None:
    done = python(installed, ["-m", "sluice_dev", "prepare"], tmp_path)
    assert done.returncode == 1
    assert f"{tmp_path} is not a Sluice project (no nginx/templates/sluice.conf.template" in (
        done.stderr
    )


def test_a_project_of_ones_own_gets_its_own_service(installed: Path, tmp_path: Path) -> None:
    """The kit's files copied into a project that is not the checkout, the core from the
    package: make new-service writes the service there and finds it there (the project's
    services/ comes first on the path), and the generated files and entries agree."""
    project = tmp_path / "mine"
    project.mkdir()
    for name in ("nginx", "deploy", "k8s"):
        shutil.copytree(ROOT / name, project / name)
    shutil.copy(ROOT / "compose.yaml", project / "compose.yaml")
    tool = ["-m", "sluice_dev", "--project-dir", str(project)]
    made = python(installed, [*tool, "new-service", "price-feed"], tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    assert (project / "services" / "sluice_services" / "price_feed" / "routes.py").is_file()
    checked = python(installed, [*tool, "sync", "--check"], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    run_dir = tmp_path / "run"
    prepared = python(installed, [*tool, "prepare", "--run-dir", str(run_dir)], tmp_path)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    procfile = (run_dir / "Procfile").read_text()
    assert "price-feed: env " in procfile
    assert f"PYTHONPATH={project / 'services'}" in procfile  # its processes find it too
