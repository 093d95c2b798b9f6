"""``make new-service NAME=price-feed``: a new service on the core, and its place in the kit.

It writes a package ``services/sluice_services/price_feed/`` (its declaration, settings, app
factory and one streaming route), a test of it, its compose service (and nginx's address and
dependency on it), its k8s manifest (Deployment, Service, PDB, HPA, NetworkPolicy; listed in
the kustomization, given nginx's address and Redis), and then rewrites the files generated
from the declarations (nginx's locations, Prometheus's targets). Nothing of the core changes.
It refuses a name or port already taken, and writes nothing when it refuses.
"""

from __future__ import annotations

import re
from pathlib import Path

from sluice.registry import NAMESPACE, Registry, RegistryError, Service, discover
from sluice_dev import sync
from sluice_dev.project import Project

TEMPLATES = Path(__file__).parent / "templates"
FIRST_PORT = 8001
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_RESERVED = {"nginx", "redis", "prometheus", "grafana", "sluice", "auth", "metrics", "tests"}


def fill(template: str, values: dict[str, str]) -> str:
    out = template
    for key, value in values.items():
        out = out.replace(f"@@{key}@@", value)
    if "@@" in out:
        raise ValueError(f"unfilled placeholder in {out[out.index('@@') :][:40]!r}")
    return out


def free_port(services: Registry) -> int:
    taken = {process_port for process_port in _ports(services)}
    port = FIRST_PORT
    while port in taken:
        port += 1
    return port


def _ports(services: Registry) -> list[int]:
    ports = []
    for service in services:
        ports += [service.port, *(c.metrics_port for c in service.companions)]
    return ports


def _block(text: str, name: str) -> tuple[int, int]:
    """Where compose service ``name``'s block starts and ends in ``text``."""
    start = re.search(rf"^  {re.escape(name)}:\n", text, re.M)
    if start is None:
        raise SystemExit(f"compose.yaml has no {name} service")
    end = re.compile(r"^(  \S|\S)", re.M).search(text, start.end())
    return start.start(), end.start() if end else len(text)


def _after_last(text: str, pattern: str, insert: str, start: int = 0, end: int = -1) -> str:
    """``insert`` after the last line matching ``pattern`` within ``text[start:end]``."""
    end = len(text) if end < 0 else end
    found = list(re.finditer(pattern, text[start:end], re.M))
    if not found:
        raise SystemExit(f"no line like {pattern!r} to put {insert.strip()!r} after")
    at = start + found[-1].end()
    at = text.index("\n", at) + 1
    return text[:at] + insert + text[at:]


def add_to_compose(text: str, values: dict[str, str]) -> str:
    """The service's block before the stack's own (redis), and nginx's address and
    dependency; compose.yaml stays the plain file it was."""
    entry = fill((TEMPLATES / "compose-service.yaml.tmpl").read_text(), values)
    redis_at = _block(text, "redis")[0]
    text = text[:redis_at] + entry + text[redis_at:]
    start, end = _block(text, "nginx")
    address = f"      {values['PREFIX']}_ADDR: {values['name']}:{values['port']}\n"
    text = _after_last(text, r"^      SLUICE_[A-Z0-9_]+_ADDR: .*$", address, start, end)
    start, end = _block(text, "nginx")
    needs = f"      {values['name']}: {{condition: service_healthy}}\n"
    return _after_last(
        text, r"^      [a-z0-9-]+: \{condition: service_healthy\}$", needs, start, end
    )


def add_to_k8s(root: Path, values: dict[str, str]) -> None:
    base = root / "k8s" / "base"
    manifest = fill((TEMPLATES / "k8s-service.yaml.tmpl").read_text(), values)
    (base / f"{values['name']}.yaml").write_text(manifest)
    kustomization = (base / "kustomization.yaml").read_text()
    kustomization = _after_last(
        kustomization, r"^  - [a-z0-9-]+\.yaml$", f"  - {values['name']}.yaml\n"
    )
    (base / "kustomization.yaml").write_text(kustomization)
    nginx = (base / "nginx.yaml").read_text()
    address = (
        f"        - name: {values['PREFIX']}_ADDR\n"
        f"          value: {values['name']}:{values['port']}\n"
    )
    nginx = _after_last(nginx, r"^        - name: SLUICE_[A-Z0-9_]+_ADDR\n.*$", address)
    (base / "nginx.yaml").write_text(nginx)
    policies = (base / "networkpolicies.yaml").read_text()
    redis = re.search(r"name: allow-redis\n.*?    ports:\n", policies, re.S)
    if redis is None:
        raise SystemExit("k8s/base/networkpolicies.yaml has no allow-redis policy")
    client = (
        "    - podSelector:\n"
        "        matchLabels:\n"
        f"          app.kubernetes.io/name: {values['name']}\n"
    )
    at = redis.end() - len("    ports:\n")
    (base / "networkpolicies.yaml").write_text(policies[:at] + client + policies[at:])


def create(project: Project, name: str, port: int | None = None) -> list[str]:
    """Write the new service ``name``; return one line per thing written."""
    if not _NAME.match(name) or name in _RESERVED:
        raise SystemExit(
            f"new-service: {name!r} must be lower-case words joined by '-' (not one of"
            f" {', '.join(sorted(_RESERVED))})"
        )
    services = discover()
    package = name.replace("-", "_")
    if name in services.processes or name in services.services:
        raise SystemExit(f"new-service: a service named {name!r} is already declared")
    folder = project.root / "services" / NAMESPACE / package
    tests = project.root / "tests" / package
    for path in (folder, tests, project.root / "k8s" / "base" / f"{name}.yaml"):
        if path.exists():
            raise SystemExit(f"new-service: {path} already exists")
    port = port or free_port(services)
    if port in _ports(services):
        raise SystemExit(f"new-service: port {port} is already declared")
    values = {
        "name": name,
        "package": package,
        "port": str(port),
        "Class": "".join(part.title() for part in name.split("-")),
        "PREFIX": "SLUICE_" + package.upper(),
    }
    declared = Service(
        name=name,
        app=f"{NAMESPACE}.{package}.app:create_app",
        port=port,
        settings=f"{NAMESPACE}.{package}.settings:S",
        routes=(f"/{name}/",),
    )
    try:
        Registry([*services, declared])  # its routes and port clash with no other
    except RegistryError as exc:
        raise SystemExit(f"new-service: {exc}") from None
    compose_path = project.root / "compose.yaml"
    compose = add_to_compose(compose_path.read_text(), values)  # refuses before any write

    written = []
    folder.mkdir(parents=True)
    for module in ("__init__", "settings", "app", "routes"):
        text = fill((TEMPLATES / f"{module}.py.tmpl").read_text(), values)
        (folder / f"{module}.py").write_text(text)
        written.append(f"wrote {(folder / f'{module}.py').relative_to(project.root)}")
    tests.mkdir(parents=True)
    (tests / "__init__.py").write_text("")
    (tests / "test_routes.py").write_text(
        fill((TEMPLATES / "test_routes.py.tmpl").read_text(), values)
    )
    written.append(f"wrote {(tests / 'test_routes.py').relative_to(project.root)}")
    compose_path.write_text(compose)
    written.append("added it to compose.yaml (its service, nginx's address and dependency)")
    add_to_k8s(project.root, values)
    written.append(f"wrote k8s/base/{name}.yaml and added it to the kustomization and nginx")
    discover_new = discover()
    if name not in discover_new.services:
        raise SystemExit(
            f"new-service: wrote {folder}, but it is not importable as {NAMESPACE}.{package}"
            " here (is this project's services/ folder on the path?)"
        )
    for path in sync.write(project, discover_new):
        written.append(f"wrote {path.relative_to(project.root)}")
    written.append(f"{name} answers on port {port}; through nginx at /{name}/ (make run)")
    return written
