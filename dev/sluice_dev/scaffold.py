"""``make new-service NAME=price-feed``: a new service on the core, and its place in the kit.

It writes a package ``services/sluice_services/price_feed/`` (its declaration, settings, app
factory and one streaming route), a test of it, its compose service (and nginx's address and
dependency on it), its k8s manifest (Deployment, Service, PDB, HPA, NetworkPolicy; listed in
the kustomization, given nginx's address and Redis), and then rewrites the files generated
from the declarations (nginx's locations, Prometheus's targets). Nothing of the core changes.
It refuses a name or port already taken, and writes nothing when it refuses.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from sluice.registry import NAMESPACE, RESERVED_NAMES, Registry, RegistryError, Service, discover
from sluice_dev import sync
from sluice_dev.project import Project

TEMPLATES = Path(__file__).parent / "templates"
FIRST_PORT = 8001
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_RESERVED = RESERVED_NAMES | {"metrics", "tests"}  # and the project's own folder names


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


def k8s_entries(root: Path, values: dict[str, str]) -> dict[Path, str]:
    """The k8s files with the service in: its manifest, and its place in the kustomization,
    nginx's addresses and the Redis policy (nothing written here)."""
    base = root / "k8s" / "base"
    for needed in ("kustomization.yaml", "nginx.yaml", "networkpolicies.yaml"):
        if not (base / needed).is_file():
            raise SystemExit(f"new-service: no k8s/base/{needed} to add {values['name']} to")
    texts = {base / f"{values['name']}.yaml": fill(_template("k8s-service.yaml"), values)}
    kustomization = (base / "kustomization.yaml").read_text()
    texts[base / "kustomization.yaml"] = _after_last(
        kustomization, r"^  - [a-z0-9-]+\.yaml$", f"  - {values['name']}.yaml\n"
    )
    address = (
        f"        - name: {values['PREFIX']}_ADDR\n"
        f"          value: {values['name']}:{values['port']}\n"
    )
    nginx = (base / "nginx.yaml").read_text()
    texts[base / "nginx.yaml"] = _after_last(
        nginx, r"^        - name: SLUICE_[A-Z0-9_]+_ADDR\n.*$", address
    )
    policies = (base / "networkpolicies.yaml").read_text()
    redis = re.search(r"name: allow-redis\n.*?    ports:\n", policies, re.S)
    if redis is None:
        raise SystemExit("new-service: k8s/base/networkpolicies.yaml has no allow-redis policy")
    client = (
        "    - podSelector:\n"
        "        matchLabels:\n"
        f"          app.kubernetes.io/name: {values['name']}\n"
    )
    at = redis.end() - len("    ports:\n")
    texts[base / "networkpolicies.yaml"] = policies[:at] + client + policies[at:]
    return texts


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.tmpl").read_text()


def write_all(texts: dict[Path, str]) -> Callable[[], None]:
    """Every file or none: on a failure what was written is taken back; the callable
    returned takes it all back later."""
    before = {path: path.read_bytes() if path.exists() else None for path in texts}
    made = sorted(
        {parent for path in texts for parent in path.parents if not parent.exists()},
        key=lambda p: len(p.parts),
    )

    def undo() -> None:
        for path, old in before.items():
            if old is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(old)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()

    try:
        for path, text in texts.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except BaseException:
        undo()
        raise
    return undo


def create(project: Project, name: str, port: int | None = None) -> list[str]:
    """Write the new service ``name`` (every file, or none); one line per thing written."""
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
    # What __init__.py.tmpl declares, field for field: what the generated files follow.
    declared = Service(
        name=name,
        title=f"Sluice {name}",
        app=f"{NAMESPACE}.{package}.app:create_app",
        settings=f"{NAMESPACE}.{package}.settings:{values['Class']}Settings",
        port=port,
        routes=(f"/{name}/",),
    )
    try:
        with_it = Registry([*services, declared])  # its routes and port clash with no other
    except RegistryError as exc:
        raise SystemExit(f"new-service: {exc}") from None

    texts = {
        folder / f"{module}.py": fill(_template(f"{module}.py"), values)
        for module in ("__init__", "settings", "app", "routes")
    }
    texts[tests / "__init__.py"] = ""
    texts[tests / "test_routes.py"] = fill(_template("test_routes.py"), values)
    compose_path = project.root / "compose.yaml"
    texts[compose_path] = add_to_compose(compose_path.read_text(), values)
    texts |= k8s_entries(project.root, values)
    texts |= {p: t for p, t in sync.generated(project, with_it).items() if p.read_text() != t}
    undo = write_all(texts)
    try:
        found = discover().services.get(name)
    except Exception as exc:  # whatever it is, nothing may be left
        found = None
        print(f"new-service: importing it failed: {exc!r}")
    if found != declared:
        undo()
        raise SystemExit(
            f"new-service: wrote {folder}, but {NAMESPACE}.{package} is not what was declared"
            " here (is this project's services/ folder on the path?); nothing is left"
        )
    written = [f"wrote {path.relative_to(project.root)}" for path in texts]
    written.append(f"{name} answers on port {port}; through nginx at /{name}/ (make run)")
    return written
