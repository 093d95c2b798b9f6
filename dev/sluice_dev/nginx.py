"""The front door's services, written from their declarations into the one nginx template.

``nginx/templates/sluice.conf.template`` is a plain file that compose, k8s and ``make run``
all use. Two regions of it are generated (between ``# BEGIN services: ...`` and
``# END services ...`` lines): the ``upstream`` blocks, and the ``location`` blocks that send
each declared route to its service. ``python -m sluice_dev sync`` rewrites them; a test
fails when the committed file differs from what the declarations say.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from sluice.registry import Registry, Service

_PLAIN_NAME = re.compile(r"[a-z0-9-]+")
_PLACEHOLDER = re.compile(r"\$\{(SLUICE_[A-Z0-9_]+)\}")
_REGION = re.compile(
    r"(?P<indent>[ ]*)# BEGIN services: (?P<name>[a-z]+)[^\n]*\n"
    r".*?^(?P=indent)# END services[^\n]*\n",
    re.S | re.M,
)
GENERATED = "generated from each service's declaration by `python -m sluice_dev sync`"


class TemplateError(ValueError):
    pass


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``${SLUICE_*}`` placeholders, as the nginx image's envsubst step does."""
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise TemplateError(f"no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def upstream_name(service: Service) -> str:
    return "sluice_" + service.name.replace("-", "_")


def _upstreams(registry: Registry) -> list[str]:
    lines: list[str] = []
    public = registry.public()
    for service in public:
        lines += [
            f"upstream {upstream_name(service)} {{",
            f"    server ${{{service.env_prefix}_ADDR}};",
            f"    keepalive {service.keepalive};",
            "    keepalive_timeout 60s;",
            "}",
            "",
        ]
    keyed = [s for s in public if s.api_keys]
    if keyed:
        lines += [
            "# Stream tokens: every service issues and accepts them (one shared secret), so any",
            "# may answer.",
            "upstream sluice_auth {",
            *(f"    server ${{{s.env_prefix}_ADDR}};" for s in keyed),
            "    keepalive 16;",
            "}",
        ]
    return lines


def location(route: str) -> str:
    """``/x/`` is a prefix location; any other route is that path exactly."""
    return f"location {route} {{" if route.endswith("/") else f"location = {route} {{"


def _locations(registry: Registry) -> list[str]:
    lines: list[str] = []
    if any(s.api_keys for s in registry.public()):  # sluice_auth exists only then
        lines += [
            "# Browser stream tokens (POST, Bearer): any service that takes keys issues them.",
            "location = /auth/stream-token {",
            "    proxy_pass http://sluice_auth;",
            "}",
        ]
    keyed = [s for s in registry.public() if s.api_keys]
    if keyed:
        # Names are [a-z0-9-] (the registry's rule): nothing to escape in nginx or JSON.
        for service in keyed:
            if not _PLAIN_NAME.fullmatch(service.name):
                raise TemplateError(f"service name {service.name!r} is not [a-z0-9-]+")
        names = ",".join(json.dumps(s.name) for s in keyed)
        lines += [
            "# The console's Streams page: which services there are, and each one's stream",
            "# summary (GET /_sluice/streams on the service: a key is needed, as anywhere).",
            "location = /_sluice/services {",
            "    default_type application/json;",
            "    add_header Cache-Control no-store always;",
            "    add_header X-Request-ID $sluice_request_id always;",
            f"    return 200 '{{\"services\":[{names}]}}';",
            "}",
        ]
        for service in keyed:
            lines += [
                f"location = /_sluice/streams/{service.name} {{",
                f"    proxy_pass http://{upstream_name(service)}/_sluice/streams;",
                "    proxy_read_timeout 5s;  # a summary, not a stream: a hung service says so",
                "}",
            ]
    for service in registry.public():
        declared = service.app.partition(":")[0].rpartition(".")[0].replace(".", "/")
        lines.append(f"# {service.name} (declared in {declared}/__init__.py)")
        for route in service.routes:
            lines += [location(route), f"    proxy_pass http://{upstream_name(service)};", "}"]
    return lines


def sync(template: str, registry: Registry) -> str:
    """``template`` with its generated regions written from ``registry``."""
    bodies = {"upstreams": _upstreams(registry), "locations": _locations(registry)}
    seen: set[str] = set()

    def region(match: re.Match[str]) -> str:
        indent, name = match["indent"], match["name"]
        if name not in bodies:
            raise TemplateError(f"unknown generated region {name!r}")
        seen.add(name)
        body = [f"{indent}{line}" if line else "" for line in bodies[name]]
        return (
            "\n".join(
                [
                    f"{indent}# BEGIN services: {name} ({GENERATED})",
                    *body,
                    f"{indent}# END services",
                ]
            )
            + "\n"
        )

    out = _REGION.sub(region, template)
    if seen != set(bodies):
        raise TemplateError(f"the template lacks the region(s) {sorted(set(bodies) - seen)}")
    return out


def binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
    return found


def write(
    nginx_dir: Path,
    prefix: Path,
    listen: str,
    addresses: Mapping[str, str],
    access_log: str | None = None,
) -> Path:
    """Render ``nginx_dir``'s local main config and the shared server config under ``prefix``.

    ``addresses``: service name -> host:port, for every service nginx routes to.
    """
    prefix = prefix.resolve()
    for sub in ("conf.d", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    values = {
        "SLUICE_NGINX_PREFIX": str(prefix),
        "SLUICE_NGINX_LISTEN": listen,
        "SLUICE_NGINX_ACCESS_LOG": access_log or str(prefix / "access.log"),
        "SLUICE_CONSOLE_ROOT": str((nginx_dir / "console").resolve()),
    }
    for name, address in addresses.items():
        values["SLUICE_" + name.upper().replace("-", "_") + "_ADDR"] = address
    main = render((nginx_dir / "local.conf.template").read_text(), values)
    (prefix / "nginx.conf").write_text(main)
    server = render((nginx_dir / "templates" / "sluice.conf.template").read_text(), values)
    (prefix / "conf.d" / "sluice.conf").write_text(server)
    return prefix / "nginx.conf"


def command(conf: Path) -> list[str]:
    prefix = conf.parent
    return [binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
