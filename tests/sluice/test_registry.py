"""sluice.registry: services found by their declarations; one that cannot work is refused
with a message naming it; the core itself names no service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sluice.registry import Companion, Registry, RegistryError, Service, discover, registry
from tests.support.paths import ROOT


def service(name: str = "price-feed", port: int = 8101, **fields: object) -> Service:
    return Service(
        name=name,
        app=f"x.{name.replace('-', '_')}.app:create_app",
        settings="x.settings:S",
        port=port,
        **fields,  # type: ignore[arg-type]
    )


def test_the_bundled_services_are_discovered_with_their_companions() -> None:
    found = registry()
    assert list(found.services) == ["chat-proxy", "demo", "log-tail", "mock-upstream", "progress"]
    assert found.process("progress-worker").companion is not None
    assert found.process("progress-worker").service.name == "progress"
    assert [s.name for s in found.public()] == ["chat-proxy", "demo", "log-tail", "progress"]


def test_an_unknown_process_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="'nope' is not one of: chat-proxy, demo"):
        registry().process("nope")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"name": "Price_Feed"}, "lower-case words"),
        ({"name": "-x"}, "lower-case words"),
        ({"app": "no-colon"}, "app must be 'module:attribute'"),
        ({"settings": "m:"}, "settings must be 'module:attribute'"),
        ({"port": 0}, "ports must be 1-65535"),
        ({"port": 70000}, "ports must be 1-65535"),
        ({"routes": ("relative",)}, "not a plain absolute path"),
        ({"routes": ("/a/../b",)}, "not a plain absolute path"),
        ({"routes": ("/a//b",)}, "not a plain absolute path"),
        ({"routes": ("/a b",)}, "not a plain absolute path"),
        ({"routes": ("/a;b",)}, "not a plain absolute path"),
        ({"routes": ("/",)}, "front door's"),
        ({"routes": ("/metrics",)}, "front door's"),
        ({"routes": ("/auth/x",)}, "front door's"),
        ({"routes": ("/_sluice/bad-request",)}, "front door's"),
        ({"routes": ("/a{b}",)}, "not a plain absolute path"),  # nginx: '{' opens a block
        ({"routes": ("/x/{id}/",)}, "not a plain absolute path"),
        ({"routes": ("/feed", "/feed")}, "declared twice"),
        ({"name": "class"}, "a package name"),
        ({"name": "import"}, "a package name"),
        ({"name": "redis"}, "the stack's own"),
        ({"name": "nginx"}, "the stack's own"),
        ({"name": "auth"}, "the stack's own"),
        (
            {"companions": (Companion("prometheus", "x.w", 8199, "SLUICE_X_PORT"),)},
            "the stack's own",
        ),
    ],
)
def test_a_declaration_that_cannot_work_is_refused(fields: dict[str, object], says: str) -> None:
    base: dict[str, object] = {
        "name": "price-feed",
        "app": "x.app:create_app",
        "settings": "x.settings:S",
        "port": 8101,
    }
    with pytest.raises(RegistryError, match=says):
        Registry([Service(**(base | fields))])  # type: ignore[arg-type]
    # a public route is FastAPI's template: {id} is fine there
    Registry([Service(**(base | {"public_routes": ("/items/{item_id}",)}))])  # type: ignore[arg-type]


def test_two_services_may_not_share_a_name_a_port_or_a_route() -> None:
    with pytest.raises(RegistryError, match="named 'price-feed'"):
        Registry([service(), service(port=8102)])
    with pytest.raises(RegistryError, match="both declare port 8101"):
        Registry([service(), service("other")])
    worker = Companion("price-feed-worker", "x.worker", 8101, "SLUICE_X_PORT")
    with pytest.raises(RegistryError, match="both declare port 8101"):
        Registry([service(companions=(worker,))])
    with pytest.raises(RegistryError, match="route '/feed/a' is price-feed's"):
        Registry([service(routes=("/feed/",)), service("quote-feed", 8102, routes=("/feed/a",))])
    with pytest.raises(RegistryError, match="is price-feed's"):
        Registry([service(routes=("/feed",)), service("quote-feed", 8102, routes=("/feed",))])
    # an exact route beside another's prefix of another path is fine
    Registry([service(routes=("/feed",)), service("other", 8102, routes=("/feeds/",))])


def write_package(root: Path, name: str, text: str) -> None:
    package = root / "sluice_services" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(text)


def discover_in(root: Path) -> subprocess.CompletedProcess[str]:
    """Discovery with only ``root`` on the path for the namespace, in a fresh interpreter."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from sluice.registry import discover\n"
        "print(sorted(discover().processes))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=False
    )


def test_a_package_of_its_own_joins_and_shared_code_is_passed_over(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        "price_feed",
        "from sluice.registry import Service\n"
        "SERVICE = Service(name='price-feed', app='m:f', settings='m:S', port=8101)\n",
    )
    write_package(tmp_path, "shared_helpers", '"""no SERVICE here"""\n')
    found = discover_in(tmp_path)
    assert found.returncode == 0, found.stderr
    assert "'price-feed'" in found.stdout and "'shared_helpers'" not in found.stdout


def test_a_package_whose_service_is_not_a_declaration_is_refused(tmp_path: Path) -> None:
    write_package(tmp_path, "bad", "SERVICE = {'name': 'bad'}\n")
    found = discover_in(tmp_path)
    assert found.returncode != 0
    assert "sluice_services.bad.SERVICE is not a sluice.registry.Service" in found.stderr


def test_no_namespace_no_services() -> None:
    assert list(discover("no_such_namespace_here").processes) == []


def test_the_core_names_no_service() -> None:
    names = [s.name for s in registry()] + list(registry().processes)
    names += [s.name.replace("-", "_") for s in registry()]
    core = ROOT / "services" / "sluice"
    hits = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in core.rglob("*.py")
        for name in names
        if name.lower() in path.read_text().lower()
    ]
    assert hits == []
