"""The files written from the services' declarations: the nginx template's service regions
and Prometheus's scrape configurations (compose, k8s). ``python -m sluice_dev sync`` writes
them; ``--check`` says which differ (the suite runs it)."""

from __future__ import annotations

from pathlib import Path

from sluice.registry import Registry
from sluice_dev import nginx, prometheus
from sluice_dev.project import Project


def generated(project: Project, services: Registry) -> dict[Path, str]:
    """Each generated file's path and what it should hold."""
    template = project.nginx_template.read_text()
    return {
        project.nginx_template: nginx.sync(template, services),
        project.prometheus_dir / "prometheus.compose.yml": prometheus.compose_config(services),
        project.prometheus_dir / "prometheus.k8s.yml": prometheus.k8s_config(),
    }


def stale(project: Project, services: Registry) -> list[Path]:
    """The generated files that differ from what the declarations say."""
    return [
        path
        for path, text in generated(project, services).items()
        if not path.is_file() or path.read_text() != text
    ]


def write(project: Project, services: Registry) -> list[Path]:
    """Write every stale file; return what was written."""
    written = []
    for path, text in generated(project, services).items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written
