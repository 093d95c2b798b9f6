from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sluice import devstack


def test_render_substitutes_only_sluice_placeholders() -> None:
    out = devstack.render("listen ${SLUICE_X}; set $a $request_id; ${HOME}", {"SLUICE_X": "80"})
    assert out == "listen 80; set $a $request_id; ${HOME}"


def test_render_names_missing_values() -> None:
    with pytest.raises(devstack.TemplateError, match="SLUICE_A, SLUICE_B"):
        devstack.render("${SLUICE_B} ${SLUICE_A}", {})


def test_prepare_generates_one_private_dev_key_and_keeps_it(tmp_path: Path) -> None:
    first = devstack.prepare(tmp_path, {})
    key = (tmp_path / "dev-api-key").read_text().strip()
    assert key.startswith("sk-dev-")
    assert stat.S_IMODE((tmp_path / "dev-api-key").stat().st_mode) == 0o600
    assert f"Authorization: Bearer {key}" in first
    procfile = (tmp_path / "Procfile").read_text()
    assert f"SLUICE_API_KEYS_FILE={tmp_path / 'dev-api-key'}" in procfile
    assert key not in procfile  # the key lives in one private file only
    devstack.prepare(tmp_path, {})
    assert (tmp_path / "dev-api-key").read_text().strip() == key


def test_prepare_uses_configured_keys_instead(tmp_path: Path) -> None:
    out = devstack.prepare(tmp_path, {"SLUICE_API_KEYS": "k1"})
    assert not (tmp_path / "dev-api-key").exists()
    assert "SLUICE_API_KEYS_FILE" not in (tmp_path / "Procfile").read_text()
    assert "SLUICE_API_KEYS" in out


def test_prepare_ports_are_overridable_and_checked(tmp_path: Path) -> None:
    devstack.prepare(tmp_path, {"SLUICE_NGINX_PORT": "9090", "SLUICE_DEMO_PORT": "9001"})
    conf = (tmp_path / "nginx" / "conf.d" / "sluice.conf").read_text()
    assert "listen 127.0.0.1:9090;" in conf
    assert "server 127.0.0.1:9001;" in conf
    with pytest.raises(SystemExit, match="not a TCP port"):
        devstack.prepare(tmp_path, {"SLUICE_DEMO_PORT": "http"})
