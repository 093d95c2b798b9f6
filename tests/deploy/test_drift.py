"""No drift: every SLUICE_* name in the README, compose, k8s and examples is read by code,
and the README's configuration table states each bounded setting's range as the code has it."""

from __future__ import annotations

import re
from pathlib import Path

from sluice import serve
from sluice.registry import registry
from sluice.settings import (
    CoreSettings,
    ScopedSettings,
    ServerSettings,
    field_bounds,
    scope_prefix,
)
from sluice_dev import check, stack
from tests.support.paths import ROOT

SETTINGS: tuple[type[ScopedSettings], ...] = (
    CoreSettings,
    ServerSettings,
    *(check.settings_class(service.settings) for service in registry()),
)
NAME = re.compile(r"\bSLUICE_[A-Z0-9_]+\b")


def settings_names() -> set[str]:
    """Every setting's name, and the old names a renamed or retired one is still read by."""
    names = {f"SLUICE_{field.upper()}" for s in SETTINGS for field in s.model_fields}
    for cls in SETTINGS:
        for klass in cls.__mro__:
            old = [*vars(klass).get("renamed", {}), *vars(klass).get("retired", {})]
            names |= {f"SLUICE_{name.upper()}" for name in old}
    return names


def deploy_names() -> set[str]:
    """Names that are not settings: the entrypoint's, nginx template values, make run ports."""
    template = (ROOT / "nginx" / "templates" / "sluice.conf.template").read_text()
    template += (ROOT / "nginx" / "local.conf.template").read_text()
    names = set(NAME.findall(template)) | {"SLUICE_SERVICE"}
    names |= set(NAME.findall((ROOT / "deploy" / "smoke.sh").read_text()))
    names |= set(NAME.findall((ROOT / "loadtests" / "locustfile.py").read_text()))
    # make run's own (the dev group), and the names they had until this release
    dev = ["NGINX", "REDIS", "PROMETHEUS", *(s.env_prefix[7:] for s in registry())]
    names |= {f"SLUICE_DEV_{name}_PORT" for name in dev} | {"SLUICE_DEV_REDIS"}
    names |= {"SLUICE_DEV_"}  # the group's prefix, as the README's table names it
    # the README's walkthrough service (tests/e2e/test_new_service.py runs it): its dev port
    names |= {f"SLUICE_DEV_{example_service().upper().replace('-', '_')}_PORT"}
    names |= {f"{s.env_prefix}_PORT" for s in registry()}
    names |= {
        "SLUICE_NGINX_PORT",
        "SLUICE_LOCAL_REDIS_PORT",
        "SLUICE_PROGRESS_MODE",
        "SLUICE_PROMETHEUS_PORT",
    }
    names |= {c.port_variable for s in registry() for c in s.companions}
    return names


def example_service() -> str:
    """The service the README's "Add your own streaming service" generates."""
    readme = (ROOT / "README.md").read_text()
    return readme.split("make new-service NAME=", 1)[1].split()[0]


def unscoped(name: str) -> str:
    """``SLUICE_CHAT_PROXY__PUBLIC_ROUTES`` -> ``SLUICE_PUBLIC_ROUTES``; an unknown scope or a
    name without one is returned as it is (and is then unknown)."""
    for service in [*registry().processes, example_service()]:
        prefix = scope_prefix(service)
        if name.startswith(prefix):
            return "SLUICE_" + name[len(prefix) :]
    return name


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
    assert {name for name in used if unscoped(name) not in known} == set()


def test_a_scoped_name_is_checked_like_the_plain_one() -> None:
    assert unscoped("SLUICE_CHAT_PROXY__PUBLIC_ROUTES") == "SLUICE_PUBLIC_ROUTES"
    assert unscoped("SLUICE_CHAT_PROXY__NO_SUCH") not in settings_names()
    assert unscoped("SLUICE_NOSERVICE__PUBLIC_ROUTES") == "SLUICE_NOSERVICE__PUBLIC_ROUTES"


def bounded() -> dict[str, str]:
    """Each bounded setting's range, as ``field_bounds`` states it (``>= 1024``)."""
    found: dict[str, str] = {}
    for cls in SETTINGS:
        for field, info in cls.model_fields.items():
            bounds = field_bounds(info)
            if bounds is not None:
                name = f"SLUICE_{field.upper()}"
                assert found.get(name, bounds) == bounds, f"{name}: two classes, two ranges"
                found[name] = bounds
    return found


RANGE = re.compile(r"`((?:>=|>|<=|<) -?[0-9.]+(?:, (?:>=|>|<=|<) -?[0-9.]+)?)`")


def configuration_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    table = table[: table.index("\n## ")]
    return [line for line in table.splitlines() if line.startswith("| `SLUICE_")]


def test_the_configuration_table_states_each_range_as_the_code_has_it() -> None:
    ranges = bounded()
    assert ranges["SLUICE_CHAT_MAX_BODY_BYTES"] == ">= 1024"  # the one that surprised users
    wrong = []
    for row in configuration_rows():
        names = NAME.findall(row.split("|")[1])
        expected = [ranges[n] for n in names if n in ranges]
        stated = RANGE.findall(row)
        if stated != expected:
            wrong.append(f"{', '.join(names)}: README {stated}, code {expected}")
    assert wrong == []


def test_the_range_check_catches_a_stale_or_missing_range() -> None:
    stale = "| `SLUICE_CHAT_MAX_BODY_BYTES` | `1048576` | largest body (range `>= 1`) |"
    assert RANGE.findall(stale) == [">= 1"] != [bounded()["SLUICE_CHAT_MAX_BODY_BYTES"]]
    assert RANGE.findall("| `SLUICE_X` | `1` | meaning |") == []


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
    assert serve.GUNICORN_CONF == ROOT / "deploy" / "gunicorn.conf.py"
    assert Path(serve.__file__).parent.parent.name == "services"
    assert stack.__name__ == "sluice_dev.stack"  # dev tooling: not under services/
