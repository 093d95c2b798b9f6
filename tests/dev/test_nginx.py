"""sluice_dev.nginx: the template's generated regions follow the declarations, and what it
renders is a configuration nginx accepts, whatever services are declared."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sluice.registry import Registry, Service, registry
from sluice_dev import nginx
from tests.support.paths import ROOT

TEMPLATE = (ROOT / "nginx" / "templates" / "sluice.conf.template").read_text()


def accepted(tmp_path: Path, services: Registry) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on the template synced for ``services``, rendered as make run does."""
    folder = tmp_path / "nginx"
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "sluice.conf.template").write_text(nginx.sync(TEMPLATE, services))
    (folder / "local.conf.template").write_text(
        (ROOT / "nginx" / "local.conf.template").read_text()
    )
    addresses = {s.name: f"127.0.0.1:{s.port}" for s in services.public()}
    conf = nginx.write(folder, tmp_path / "run", "127.0.0.1:8080", addresses)
    return subprocess.run([*nginx.command(conf), "-t"], capture_output=True, text=True, check=False)


def feed(**fields: object) -> Service:
    return Service(
        name="price-feed",
        app="x.app:create_app",
        settings="x.settings:S",
        port=8101,
        routes=("/price-feed/",),
        **fields,  # type: ignore[arg-type]
    )


def test_the_shipped_services_render_a_configuration_nginx_accepts(tmp_path: Path) -> None:
    done = accepted(tmp_path, registry())
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("keys", [True, False])
def test_stream_tokens_are_routed_only_where_a_service_takes_keys(
    tmp_path: Path, keys: bool
) -> None:
    """With no public service that takes keys there is no sluice_auth upstream: its location
    must go too, or nginx refuses the whole configuration."""
    services = Registry([feed(api_keys=keys)])
    synced = nginx.sync(TEMPLATE, services)
    assert ("location = /auth/stream-token {" in synced) is keys
    assert ("upstream sluice_auth {" in synced) is keys
    done = accepted(tmp_path, services)
    assert done.returncode == 0, done.stderr


def test_a_template_without_its_regions_is_refused() -> None:
    with pytest.raises(nginx.TemplateError, match="lacks the region"):
        nginx.sync("server {}\n", registry())
