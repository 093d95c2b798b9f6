"""The project the dev tool works on: the folder that holds ``nginx/``, ``deploy/``,
``compose.yaml`` and ``k8s/`` (a Sluice checkout, or a project of yours laid out the same
way). The core may be installed as a package anywhere; these files are the project's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NEEDED = (
    "nginx/templates/sluice.conf.template",
    "nginx/local.conf.template",
    "deploy/gunicorn.conf.py",
    "deploy/prometheus/rules/sluice.yml",
)


@dataclass(frozen=True, slots=True)
class Project:
    root: Path

    @classmethod
    def at(cls, root: Path) -> Project:
        """The project at ``root``; SystemExit naming what is missing when it is not one."""
        root = root.resolve()
        missing = [name for name in NEEDED if not (root / name).is_file()]
        if missing:
            raise SystemExit(
                f"{root} is not a Sluice project (no {', '.join(missing)}): run from the"
                " project's folder or pass --project-dir"
            )
        return cls(root)

    @property
    def services_dir(self) -> Path:
        """Where the project's service packages live (``sluice_services/`` in it)."""
        return self.root / "services"

    @property
    def nginx_dir(self) -> Path:
        return self.root / "nginx"

    @property
    def nginx_template(self) -> Path:
        return self.nginx_dir / "templates" / "sluice.conf.template"

    @property
    def gunicorn_conf(self) -> Path:
        return self.root / "deploy" / "gunicorn.conf.py"

    @property
    def prometheus_dir(self) -> Path:
        return self.root / "deploy" / "prometheus"

    @property
    def rules(self) -> Path:
        return self.prometheus_dir / "rules" / "sluice.yml"
