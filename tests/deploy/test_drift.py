"""No drift: every SLUICE_* name in the README, compose, k8s and examples is read by code."""

from __future__ import annotations

import re
from pathlib import Path

from chat_proxy.settings import ChatSettings
from demo.settings import DemoSettings
from log_tail.settings import LogTailSettings
from mock_upstream.settings import MockSettings
from progress.settings import ProgressSettings
from sluice import devstack
from sluice.settings import CoreSettings, ServerSettings

ROOT = devstack.ROOT
SETTINGS = (
    CoreSettings,
    ServerSettings,
    DemoSettings,
    ChatSettings,
    MockSettings,
    ProgressSettings,
    LogTailSettings,
)
NAME = re.compile(r"\bSLUICE_[A-Z0-9_]+\b")


def settings_names() -> set[str]:
    return {f"SLUICE_{field.upper()}" for s in SETTINGS for field in s.model_fields}


def deploy_names() -> set[str]:
    """Names that are not settings: the entrypoint's, nginx template values, make run ports."""
    template = (ROOT / "nginx" / "templates" / "sluice.conf.template").read_text()
    template += (ROOT / "nginx" / "local.conf.template").read_text()
    names = set(NAME.findall(template)) | {"SLUICE_SERVICE"}
    names |= set(NAME.findall((ROOT / "deploy" / "smoke.sh").read_text()))
    names |= set(NAME.findall((ROOT / "loadtests" / "locustfile.py").read_text()))
    names |= {f"{s.env_prefix}_PORT" for s in devstack.SERVICES.values()}
    names |= {
        "SLUICE_NGINX_PORT",
        "SLUICE_LOCAL_REDIS_PORT",
        "SLUICE_PROGRESS_MODE",
        "SLUICE_PROMETHEUS_PORT",
    }
    return names


def mentioned(*paths: str) -> set[str]:
    found: set[str] = set()
    for pattern in paths:
        for path in ROOT.glob(pattern):
            found |= set(NAME.findall(path.read_text()))
    return found


def test_every_name_in_readme_compose_k8s_and_examples_is_read_by_code() -> None:
    known = settings_names() | deploy_names()
    used = mentioned(
        "README.md",
        "compose.yaml",
        ".env.example",
        "k8s/**/*.yaml",
        "k8s/**/*.example",
        "Dockerfile",
    )
    assert used - known == set()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    documented = set(NAME.findall(table))
    missing = settings_names() - documented - {"SLUICE_SERVICE_NAME"}
    assert missing == set()


def test_the_image_copies_what_the_entrypoint_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/gunicorn.conf.py /app/deploy/gunicorn.conf.py" in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "sluice.serve"]' in dockerfile
    assert devstack.GUNICORN_CONF == ROOT / "deploy" / "gunicorn.conf.py"
    assert Path(devstack.__file__).parent.parent.name == "services"
