"""The services of a Sluice stack, each declared once, in its own package.

A service is a package of the ``sluice_services`` namespace whose ``__init__`` holds
``SERVICE = Service(...)``: its name, its app factory, its port, the public routes nginx
sends to it, the processes that run beside it. The registry finds them by walking that
namespace (PEP 420: a distribution of your own can add packages to it), so the core names
none. Everything that lists services (``serve``, ``healthcheck``, the dev stack, the nginx
locations, the Prometheus targets, the drift tests for compose and k8s) asks here.

A service package's ``__init__`` is imported for discovery: keep it to the declaration (no
FastAPI, no settings read); the app factory and settings class are named ``module:attribute``.
A package of the namespace without ``SERVICE`` is shared code, not a service.
"""

from __future__ import annotations

import importlib
import keyword
import pkgutil
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache

NAMESPACE = "sluice_services"
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_ROUTE = re.compile(r"^/[A-Za-z0-9._~/-]*$")  # what nginx routes: a plain path or prefix
_TEMPLATE = re.compile(r"^/[A-Za-z0-9._~/{}-]*$")  # a public route is FastAPI's: {id} allowed
# Names the stack's own processes and make run's settings already use.
RESERVED_NAMES = frozenset({"nginx", "redis", "prometheus", "grafana", "sluice", "auth", "dev"})
# The front door's own: health, metrics (404 there), stream tokens, its internal error URIs.
RESERVED_ROUTES = ("/healthz", "/readyz", "/metrics", "/auth/", "/_sluice/")


def overlap(one: str, other: str) -> bool:
    """Whether nginx could send one request to both routes (``/x/`` is a prefix)."""
    return (
        one == other
        or (one.endswith("/") and other.startswith(one))
        or (other.endswith("/") and one.startswith(other))
    )


def _reserved() -> str:
    return ", ".join(sorted(RESERVED_NAMES))


class RegistryError(ValueError):
    """A declaration that cannot work: the message names the service and the field."""


@dataclass(frozen=True, slots=True)
class Companion:
    """A process that runs beside a service's app, from the same image (a job worker).

    It serves ``/metrics`` (Prometheus) on ``metrics_port``; ``port_variable`` is the setting
    that moves it, ``container_env`` what the image's entrypoint adds (listen on every
    interface, so Prometheus's container reaches it).
    """

    name: str
    module: str  # run as ``python -m module``
    metrics_port: int
    port_variable: str
    needs_redis: bool = True  # only started when there is a Redis
    container_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Service:
    """One service: an app on the core (gunicorn + the core's worker), on its own port.

    ``routes`` are what nginx sends to it: ``/x`` is that path exactly, ``/x/`` that prefix.
    A service with no routes is internal (an upstream of another). ``public_routes`` are the
    routes open without a key by default (``SLUICE_PUBLIC_ROUTES`` overrides). ``dev_env``
    is what ``make run`` adds to its environment unless the user set it; ``{other-service}``
    there is that service's local address, ``{stack_logs}`` the stack's log files.
    """

    name: str
    app: str  # ``module:factory``, called with no argument
    settings: str  # ``module:SettingsClass``
    port: int
    title: str = ""
    routes: tuple[str, ...] = ()
    public_routes: tuple[str, ...] = ()
    keepalive: int = 64  # idle connections nginx keeps to it
    uses_redis: bool = False  # given the stack's Redis (make run: the local one) when there is one
    api_keys: bool = True  # takes the stack's API keys (a stand-in upstream: no)
    companions: tuple[Companion, ...] = ()
    examples: tuple[str, ...] = ()  # paths (and queries) make run suggests trying with curl
    dev_env: Mapping[str, str] = field(default_factory=dict)
    dev_env_redis: Mapping[str, str] = field(default_factory=dict)  # added in Redis mode

    @property
    def metrics_port(self) -> int:
        """Every app serves ``/metrics`` on its own port (never through nginx)."""
        return self.port

    @property
    def env_prefix(self) -> str:
        """``SLUICE_PRICE_FEED`` for ``price-feed``: its ``_ADDR`` and ``_PORT`` variables."""
        return "SLUICE_" + self.name.upper().replace("-", "_")

    @property
    def gunicorn_app(self) -> str:
        return f"{self.app}()"

    def validate(self) -> None:
        where = f"service {self.name!r}"
        for name in (self.name, *(c.name for c in self.companions)):
            if not _NAME.fullmatch(name) or keyword.iskeyword(name.replace("-", "_")):
                raise RegistryError(
                    f"{where}: {name!r} must be lower-case words joined by '-' (a package name)"
                )
            if name in RESERVED_NAMES:
                raise RegistryError(f"{where}: {name!r} is the stack's own (one of {_reserved()})")
        for label, spec in (("app", self.app), ("settings", self.settings)):
            module, _, attribute = spec.partition(":")
            if not module or not attribute.isidentifier():
                raise RegistryError(f"{where}: {label} must be 'module:attribute', not {spec!r}")
        ports = [self.port, *(c.metrics_port for c in self.companions)]
        if not all(0 < port < 65536 for port in ports):
            raise RegistryError(f"{where}: ports must be 1-65535, not {ports}")
        for route, form in [
            *((r, _ROUTE) for r in self.routes),
            *((r, _TEMPLATE) for r in self.public_routes),
        ]:
            if not form.match(route) or "//" in route or "/." in route:
                raise RegistryError(f"{where}: route {route!r} is not a plain absolute path")
        if len(set(self.routes)) != len(self.routes):
            raise RegistryError(f"{where}: a route is declared twice in {list(self.routes)}")


@dataclass(frozen=True, slots=True)
class Process:
    """Something the image can run (``SLUICE_SERVICE``): a service's app or a companion."""

    name: str
    service: Service
    companion: Companion | None = None


class Registry:
    """The declared services, in name order; every name and port used once."""

    def __init__(self, services: list[Service]) -> None:
        self.services: dict[str, Service] = {}
        processes: dict[str, Process] = {}
        ports: dict[int, str] = {}
        routes: dict[str, str] = {route: "the front door" for route in RESERVED_ROUTES}
        for service in sorted(services, key=lambda s: s.name):
            service.validate()
            for route in service.routes:
                if route == "/":
                    raise RegistryError(f"service {service.name!r}: '/' is the front door's")
                for taken, owner in routes.items():
                    if overlap(route, taken) and owner != service.name:
                        raise RegistryError(
                            f"service {service.name!r}: route {route!r} is {owner}'s ({taken!r})"
                        )
                routes[route] = service.name
            own = [Process(service.name, service)]
            own += [Process(c.name, service, c) for c in service.companions]
            for process in own:
                port = process.companion.metrics_port if process.companion else service.port
                if process.name in processes:
                    raise RegistryError(f"two declarations are named {process.name!r}")
                if port in ports:
                    raise RegistryError(
                        f"{process.name!r} and {ports[port]!r} both declare port {port}"
                    )
                processes[process.name] = process
                ports[port] = process.name
            self.services[service.name] = service
        self.processes = processes

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services.values())

    def process(self, name: str) -> Process:
        """The process ``SLUICE_SERVICE`` names; KeyError with the known names."""
        try:
            return self.processes[name]
        except KeyError:
            raise KeyError(f"{name!r} is not one of: {', '.join(self.processes)}") from None

    def public(self) -> list[Service]:
        """The services nginx routes to (the others are internal)."""
        return [s for s in self.services.values() if s.routes]


def discover(namespace: str = NAMESPACE) -> Registry:
    """Every ``<namespace>.<package>:SERVICE``, imported and checked."""
    importlib.invalidate_caches()  # a service written since (make new-service)
    try:
        package = importlib.import_module(namespace)
    except ModuleNotFoundError:
        return Registry([])
    found: list[Service] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{namespace}.{info.name}")
        declared = getattr(module, "SERVICE", None)
        if declared is None:
            continue  # shared code, not a service
        if not isinstance(declared, Service):
            raise RegistryError(f"{module.__name__}.SERVICE is not a sluice.registry.Service")
        found.append(declared)
    return Registry(found)


@cache
def registry() -> Registry:
    """The installed services, discovered once per process."""
    return discover()
