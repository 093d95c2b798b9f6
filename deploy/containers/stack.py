"""The compose stack, driven as a user drives it: compose.yaml unchanged, a project name of its
own, ports published on 127.0.0.1 (free ones), every container healthy before use, and
everything it made (containers, networks, volumes) removed at the end, failure or not."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .engine import Engine, Healthchecks, health, run

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
# podman has no image for Grafana here (no package, no registry): the run leaves it out and
# tests/e2e/test_dashboards.py keeps the PromQL proof of the dashboards.
PODMAN_SKIPS = ("grafana",)
SERVICES = (
    "nginx",
    "demo",
    "chat-proxy",
    "mock-upstream",
    "progress",
    "progress-worker",
    "log-tail",
    "redis",
    "prometheus",
    "grafana",
)

# Where pin_names' block starts in a container's hosts file (replaced whole each time).
PINNED_MARK = "# sluice test harness: the services' containers (aardvark-dns #389)\n"


def _pin(hosts: Path, block: str) -> None:
    """``block`` as the end of a hosts file, written in place (a container's /etc/hosts is
    this very file, bind-mounted: a new file by rename would not reach it), in one write, so
    a lookup meanwhile reads the old lines or the new ones."""
    kept = hosts.read_text().split(PINNED_MARK, 1)[0]
    data = f"{kept.rstrip()}\n{PINNED_MARK}{block}".encode()
    fd = os.open(hosts, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stage(keys: str, extra_env: str = "") -> Path:
    """A project folder beside the tree: its own .env (from .env.example, with ``keys``), the
    folders compose.yaml mounts linked in. The tree's own .env is never read or written."""
    folder = Path(tempfile.mkdtemp(prefix="sluice-compose-"))
    example = (ROOT / ".env.example").read_text().splitlines()
    lines = [
        f"SLUICE_API_KEYS={keys}" if ln.startswith("SLUICE_API_KEYS=") else ln for ln in example
    ]
    (folder / ".env").write_text("\n".join(lines) + "\n" + extra_env)
    for name in ("nginx", "deploy"):
        (folder / name).symlink_to(ROOT / name)
    return folder


@dataclass
class Stack:
    engine: Engine
    project: str
    project_dir: Path
    key: str
    ports: dict[str, int]
    services: list[str]
    log_path: Path
    staged: bool = True
    # More keys of the staged .env, for tests whose counts nothing else may touch.
    extra_keys: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['nginx']}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus']}"

    def env(self) -> dict[str, str]:
        return {
            **self.engine.env,
            "PUBLISH_NGINX": f"127.0.0.1:{self.ports['nginx']}",
            "PUBLISH_PROMETHEUS": f"127.0.0.1:{self.ports['prometheus']}",
            "PUBLISH_GRAFANA": f"127.0.0.1:{self.ports['grafana']}",
        }

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            *self.engine.compose_argv(),
            "--project-name",
            self.project,
            "--project-directory",
            str(self.project_dir),
            "--file",
            str(COMPOSE_FILE),
            *args,
        ]
        return run(argv, self.env(), timeout=timeout, check=check)

    def containers(self, service: str | None = None) -> list[str]:
        """Running or not, this project's containers (of ``service``), by name, sorted."""
        flt = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service is not None:
            flt += ["--filter", f"label=com.docker.compose.service={service}"]
        out = self.engine.command("ps", "-a", *flt, "--format", "{{.Names}}")
        return sorted(line for line in out.splitlines() if line.strip())

    def up(self, scale: dict[str, int] | None = None, timeout: float = 300) -> float:
        """compose up (no build: the image is built already), then every container healthy;
        seconds it took."""
        started = time.monotonic()
        scales = [f"--scale={name}={count}" for name, count in (scale or {}).items()]
        with Healthchecks(self.engine, self.project):  # compose waits on service_healthy
            self.compose("up", "--detach", "--no-build", *scales, *self.services, timeout=timeout)
        self.wait_healthy(timeout - (time.monotonic() - started))
        return time.monotonic() - started

    def wait_healthy(self, timeout: float = 240, names: Sequence[str] | None = None) -> None:
        deadline = time.monotonic() + max(timeout, 10)
        status: dict[str, str] = {}
        with Healthchecks(self.engine, self.project, interval=1.0):
            while time.monotonic() < deadline:
                wanted = list(names) if names is not None else self.containers()
                status = health(self.engine, wanted)
                if wanted and all(status.get(n) in ("healthy", "none") for n in wanted):
                    self.pin_names()
                    return
                time.sleep(1)
        raise TimeoutError(f"not healthy after {timeout:.0f} s: {status}\n{self.logs(80)}")

    def pin_names(self) -> None:
        """Each service, by name, in every container's /etc/hosts: one line per running
        container of it (a name of two replicas resolves to both, as from DNS) (podman only).
        podman 4.3's DNS (aardvark-dns 1.4) tears its sockets down and sets them up again
        whenever a container joins or leaves the network (aardvark-dns #389), and a query
        lost then costs glibc 5 s, past every connect timeout: seen as seconds of "redis
        failed: TimeoutError" on a live replica while the other one stopped, and as nginx's
        reload failing for 20 s on "host not found" after a replica came back. Pinned again
        at every wait for health (each start is followed by one); a replica stopped since
        keeps its line until then, where DNS would drop it. The engine's DNS is not what
        these tests test, and Docker's own needs none of this."""
        if self.engine.kind != "podman":
            return
        names = self.containers()
        out = self.engine.command(
            "inspect",
            "--format",
            '{{.Name}} {{.State.Status}} {{index .Config.Labels "com.docker.compose.service"}} '
            "{{.HostsPath}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            *names,
            check=False,
        )
        running = [line.split() for line in out.splitlines() if " running " in line]
        rows = [parts for parts in running if len(parts) >= 5]
        by_service: dict[str, list[str]] = {}
        for parts in rows:
            by_service.setdefault(parts[2], []).append(parts[4])
        pinned = sorted((ip, name) for name, ips in by_service.items() for ip in ips)
        block = "".join(f"{ip}\t{name}\n" for ip, name in pinned)
        for parts in rows:
            try:
                _pin(Path(parts[3]), block)
            except OSError:  # not a file of this machine's (a remote engine): DNS alone
                continue

    def health_now(self) -> dict[str, str]:
        """Run every healthcheck once (podman) and report."""
        if self.engine.kind == "podman":
            Healthchecks(self.engine, self.project).run_once()
        return health(self.engine, self.containers())

    def logs(self, tail: int = 200) -> str:
        result = self.compose("logs", "--no-color", f"--tail={tail}", timeout=120, check=False)
        return result.stdout + result.stderr

    def smoke(self, timeout: float = 300) -> str:
        """deploy/smoke.sh, then every README example as written (deploy/readme_examples.py),
        against the stack's nginx."""
        out = ""
        for argv in (
            ["bash", str(ROOT / "deploy" / "smoke.sh"), self.base],
            [sys.executable, str(ROOT / "deploy" / "readme_examples.py"), self.base],
        ):
            result = run(argv, {"SLUICE_SMOKE_KEY": self.key}, timeout=timeout, check=False)
            out += result.stdout
            if result.returncode != 0:
                raise AssertionError(
                    f"{Path(argv[1]).name} failed:\n{out}{result.stderr}\n{self.logs()}"
                )
        return out

    def down(self) -> dict[str, list[str]]:
        """Everything removed; what was left after compose down (before forcing it away)."""
        with open(self.log_path, "a") as log:
            log.write(self.logs(2000))
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
        left = self.engine.project_objects(self.project)
        if any(left.values()):
            self.engine.remove_project(self.project)
        if self.staged:
            shutil.rmtree(self.project_dir, ignore_errors=True)
        return left


def new_stack(engine: Engine, log_dir: Path, project_dir: Path | None = None) -> Stack:
    """A stack not yet up: staged with a key of its own unless ``project_dir`` (with its .env)
    is given, as `make compose-smoke` does with the tree."""
    extra: list[str] = []
    if project_dir is None:
        key = f"sk-e2e-compose-{secrets.token_hex(16)}"
        extra = [f"sk-e2e-compose-{secrets.token_hex(16)}" for _ in range(3)]
        # progress: 100 subscribers of one job (one key) and their reconnects in the stop test
        scoped = (
            "SLUICE_PROGRESS__MAX_STREAMS_PER_KEY=200\nSLUICE_PROGRESS__RATE_LIMIT=6000/minute\n"
        )
        folder, staged = stage(",".join([key, *extra]), scoped), True
    else:
        env = (project_dir / ".env").read_text().splitlines()
        keys = [ln.split("=", 1)[1] for ln in env if ln.startswith("SLUICE_API_KEYS=")]
        key = keys[-1].split(",")[0] if keys else ""
        assert key, f"{project_dir / '.env'}: SLUICE_API_KEYS is empty"
        folder, staged = project_dir, False
    project = f"sluicetest{os.getpid()}{secrets.token_hex(3)}"
    services = [s for s in SERVICES if engine.kind == "docker" or s not in PODMAN_SKIPS]
    ports = {name: free_port() for name in ("nginx", "prometheus", "grafana")}
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"compose-{project}.log"
    return Stack(engine, project, folder, key, ports, services, log_path, staged, extra)
