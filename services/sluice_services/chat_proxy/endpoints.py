"""The fleet's endpoints: every address of every deployment, with its pool, its load, its
recent time to first token and its breaker; host names resolved at start and again every
``routing.resolve_interval`` seconds.

Why each address is its own endpoint: a keep-alive pool to a name (a ClusterIP, a load
balancer) keeps the few connections its first requests opened, so every stream of a
worker goes to the few replicas those reached, for as long as the connections live. Here
a name that resolves to several addresses (a Kubernetes headless Service, DNS round robin)
gives one pool per address, and the balancer sees each replica's load. An address that
disappears from the answer gets no new stream; its pool is closed when its last stream
ends. An answer that fails keeps the addresses already known (a DNS outage is not a
fleet outage).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from contextlib import suppress
from urllib.parse import urlsplit

from sluice_services.chat_proxy.breaker import Breaker
from sluice_services.chat_proxy.fleet import Deployment, Fleet
from sluice_services.chat_proxy.metrics import COOLDOWN, ENDPOINTS, STREAMS_ACTIVE
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.chat_proxy.upstream import Upstream, pool_size

log = logging.getLogger("chat_proxy")

TTFT_ALPHA = 0.3  # weight of the newest first-token time in its moving average
TTFT_FLOOR = 0.005  # s: below this, replicas are equally fast
RETRY_EMPTY = 5.0  # s: a deployment with no address yet is resolved again this soon
TICK = 5.0  # s: the cooldown gauges are brought up to date at least this often
RESOLVE_AGAIN = 1.0  # s: a connect failure asks DNS again, at most this often a deployment


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` stands for (sorted, unique); an IP literal is its own."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


class Endpoint:
    """One address of one deployment."""

    __slots__ = (
        "_active",
        "active",
        "address",
        "auth",
        "breaker",
        "deployment",
        "owner",
        "retired",
        "ttft",
        "upstream",
    )

    def __init__(
        self,
        deployment: Deployment,
        address: str,
        upstream: Upstream,
        breaker: Breaker,
        service: str,
        owner: Endpoints | None = None,
    ) -> None:
        self.owner = owner  # (marks the deployment's cooldown gauge)
        self.deployment = deployment
        self.address = address
        self.upstream = upstream
        self.breaker = breaker
        self.active = 0  # requests open on it (streams and not)
        self.ttft: float | None = None  # moving average of its time to first token
        self.retired = False  # gone from its name's addresses: no new request
        key = deployment.api_key
        self.auth = {"authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        self._active = STREAMS_ACTIVE.labels(service, deployment.name)

    def __repr__(self) -> str:  # (never the key)
        return f"<Endpoint {self.deployment.name} {self.address} active={self.active}>"

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def full(self) -> bool:
        cap = self.deployment.max_streams
        return cap is not None and self.active >= cap

    def usable(self, now: float) -> bool:
        return not self.retired and not self.full and self.breaker.available(now)

    def cost(self, floor: float) -> float:
        """What one more request costs here: its load times its slowness, over its weight."""
        ttft = self.ttft if self.ttft is not None else floor
        return (self.active + 1) * max(ttft, TTFT_FLOOR) / self.deployment.weight

    def took(self, seconds: float) -> None:
        """An attempt's time to its first token."""
        self.ttft = seconds if self.ttft is None else self.ttft + TTFT_ALPHA * (seconds - self.ttft)

    def mark_cooling(self) -> None:
        if self.owner is not None:
            self.owner.mark(self.deployment)

    def unreachable(self) -> None:
        if self.owner is not None:
            self.owner.unreachable(self.deployment)

    def opened(self) -> None:
        self.active += 1
        self._active.inc()

    def closed(self) -> None:
        self.active -= 1
        self._active.dec()
        if self.retired and not self.active:
            _close_soon(self.upstream)


def _close_soon(upstream: Upstream) -> None:
    with suppress(RuntimeError):  # (no loop: the process is ending)
        task = asyncio.get_running_loop().create_task(upstream.aclose())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Task[None]] = set()


class Endpoints:
    """Every endpoint of the fleet, by deployment, kept up to date with DNS."""

    def __init__(self, fleet: Fleet, settings: ChatSettings) -> None:
        self.fleet = fleet
        self.settings = settings
        self.service = settings.service_name
        self.by_deployment: dict[str, list[Endpoint]] = {d.name: [] for d in fleet.deployments}
        self._task: asyncio.Task[None] | None = None
        self._asked: dict[str, float] = {}  # deployment -> when a connect failure last resolved
        self._asking: set[asyncio.Task[None]] = set()

    def of(self, deployment: Deployment) -> list[Endpoint]:
        return self.by_deployment[deployment.name]

    async def start(self) -> None:
        await asyncio.gather(*(self._refresh(d) for d in self.fleet.deployments))
        self._task = asyncio.get_running_loop().create_task(self._refresher())

    async def aclose(self) -> None:
        for asking in list(self._asking):
            asking.cancel()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for endpoint in list(self.all()):
            await endpoint.upstream.aclose()

    def unreachable(self, deployment: Deployment) -> None:
        """An endpoint of it refused or dropped a connection: its pod may have been replaced
        (a new address, where a name resolves to pods, not to a stable Service address), so
        DNS is asked again now rather than at the next interval (at most once a second)."""
        now = time.monotonic()
        if now - self._asked.get(deployment.name, -RESOLVE_AGAIN) < RESOLVE_AGAIN:
            return
        self._asked[deployment.name] = now
        task = asyncio.get_running_loop().create_task(self._refresh(deployment))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    def mark(self, deployment: Deployment) -> None:
        """Its cooldown gauge: 1 while any of its endpoints is out (one bad pod among good
        ones is the case to see), kept true without traffic by the refresher's tick."""
        now = time.monotonic()
        cooling = any(not e.retired and e.breaker.cooling(now) for e in self.of(deployment))
        COOLDOWN.labels(self.service, deployment.name).set(1 if cooling else 0)

    def all(self) -> list[Endpoint]:
        return [e for endpoints in self.by_deployment.values() for e in endpoints]

    def problem(self) -> str | None:
        """None while any endpoint can take a request (busy or not); else why none can."""
        now = time.monotonic()
        endpoints = self.all()
        if not endpoints:
            return "no upstream address resolved"
        if any(not e.retired and e.breaker.available(now) for e in endpoints):
            return None
        if any(not e.retired and e.full for e in endpoints):
            return None  # (full, not broken: readiness is not load)
        return "every upstream endpoint is in cooldown"

    async def _refresher(self) -> None:
        interval = self.fleet.routing.resolve_interval
        due = time.monotonic() + interval
        while True:
            empty = any(not self.by_deployment[d.name] for d in self.fleet.deployments)
            if empty:
                due = min(due, time.monotonic() + RETRY_EMPTY)
            await asyncio.sleep(max(0.0, min(TICK, due - time.monotonic())))
            if time.monotonic() >= due:
                await asyncio.gather(*(self._refresh(d) for d in self.fleet.deployments))
                due = time.monotonic() + interval
            for deployment in self.fleet.deployments:
                self.mark(deployment)

    async def _refresh(self, deployment: Deployment) -> None:
        url = urlsplit(deployment.base_url)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            async with asyncio.timeout(self.settings.upstream_connect_timeout):
                addresses = await resolve(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            log.warning(
                "could not resolve an upstream's host; its known addresses stay",
                extra={"upstream": deployment.name, "host": host, "error": repr(exc)},
            )
            return
        if not addresses:
            return
        self._update(deployment, addresses)

    def _update(self, deployment: Deployment, addresses: list[str]) -> None:
        current = self.by_deployment[deployment.name]
        known = {e.address: e for e in current}
        kept = [known[a] for a in addresses if a in known]
        added = [self._endpoint(deployment, a) for a in addresses if a not in known]
        for endpoint in current:
            if endpoint.address not in addresses:
                endpoint.retired = True
                if not endpoint.active:
                    _close_soon(endpoint.upstream)
        if added or len(kept) != len(current):
            log.info(
                "upstream addresses",
                extra={
                    "upstream": deployment.name,
                    "addresses": addresses,
                    "added": [e.address for e in added],
                    "retired": [e.address for e in current if e.retired],
                },
            )
        self.by_deployment[deployment.name] = kept + added
        ENDPOINTS.labels(self.service, deployment.name).set(len(kept) + len(added))
        self.mark(deployment)

    def _endpoint(self, deployment: Deployment, address: str) -> Endpoint:
        s = self.settings
        upstream = Upstream(
            deployment.base_url,
            s.upstream_connect_timeout,
            s.upstream_read_timeout,
            pool_size(s.max_streams_per_worker),
            max_response_bytes=s.upstream_max_response_bytes,
            ca_bundle=deployment.ca_bundle,
            address=address,
        )
        routing = self.fleet.routing
        breaker = Breaker(routing.failures, routing.cooldown)
        return Endpoint(deployment, address, upstream, breaker, self.service, self)
