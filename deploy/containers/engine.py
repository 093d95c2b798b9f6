"""A container engine for the compose run: a real Docker engine where one answers, otherwise
Debian's podman behind its Docker-compatible API (installed when missing, as root).

podman here needs: runc (crun fails on hybrid cgroups), cgroupfs, file events, and default
ulimits it may set (raising nproc to the host's hard limit is refused by runc: "error setting
rlimit type 6"), found by probing rather than assumed. podman runs healthchecks only through
systemd, which containers here lack: ``Healthchecks`` runs them itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Kept between runs (the probed limits); podman keeps images in its own store.
STATE = Path(os.environ.get("SLUICE_CONTAINERS_STATE", "/var/tmp/sluice-containers"))  # noqa: S108
# catatonit: the pause process of pods (kube play builds its pause image from it)
PACKAGES = {
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "catatonit": "catatonit",
}
COMPOSE_LABEL = "com.docker.compose.project"


class EngineUnavailable(RuntimeError):
    """No engine, and none may be installed here: the message says what to do."""


def run(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=input_bytes is None,
        input=input_bytes,
        timeout=timeout,
        check=False,
    )
    out = (
        result.stdout if isinstance(result.stdout, str) else result.stdout.decode(errors="replace")
    )
    err = (
        result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    )
    done = subprocess.CompletedProcess(result.args, result.returncode, out, err)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}:\n{out[-4000:]}{err[-4000:]}"
        )
    return done


def docker_answers() -> bool:
    """A real Docker engine (not our podman: its socket is never in this process's env)."""
    if shutil.which("docker") is None:
        return False
    try:
        info = run(["docker", "info", "--format", "{{json .}}"], timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0 and "podman" not in info.stdout.lower()


def install_missing(packages: dict[str, str]) -> None:
    """apt-get install what is missing, as the Makefile's install_missing does."""
    missing = [
        pkg
        for cmd, pkg in packages.items()
        if shutil.which(cmd) is None and not Path(f"/usr/sbin/{cmd}").exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineUnavailable(
            "no Docker engine answers and podman cannot be installed (not root): "
            f"sudo apt-get install {' '.join(missing)}, or point DOCKER_HOST at an engine"
        )
    print(f"apt-get install: {' '.join(missing)}", flush=True)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env, timeout=600)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env, timeout=1200)


def containers_conf(nofile: int, nproc: int) -> str:
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )


def limit_candidates(hard: int, floor: int = 4096) -> list[int]:
    """The host's hard limit, then halves of it down to ``floor``."""
    value = hard if hard != resource.RLIM_INFINITY else 1 << 20
    found = []
    while value >= floor:
        found.append(value)
        value //= 2
    return found or [floor]


@dataclass
class Engine:
    kind: str  # "docker" | "podman"
    env: dict[str, str] = field(default_factory=dict)
    service: subprocess.Popen[bytes] | None = None
    run_dir: Path | None = None

    @property
    def cli(self) -> str:
        return self.kind

    def command(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return run([self.cli, *args], self.env, timeout=timeout, check=check).stdout

    def compose_argv(self) -> list[str]:
        if (
            self.kind == "docker"
            and run(["docker", "compose", "version"], check=False).returncode == 0
        ):
            return ["docker", "compose"]
        return ["docker-compose"]

    def image_label(self, image: str, label: str) -> str | None:
        result = run(
            [self.cli, "image", "inspect", image, "--format", "{{json .Config.Labels}}"],
            self.env,
            check=False,
        )
        if result.returncode != 0:
            return None
        labels = json.loads(result.stdout.strip() or "null") or {}
        value = labels.get(label)
        return str(value) if value is not None else None

    def project_objects(self, project: str) -> dict[str, list[str]]:
        """What a compose project left: containers, networks, volumes (by compose's label)."""
        flt = f"label={COMPOSE_LABEL}={project}"
        found = {}
        for kind, fmt in (
            ("container", "{{.Names}}"),
            ("network", "{{.Name}}"),
            ("volume", "{{.Name}}"),
        ):
            args = ["ps", "-a"] if kind == "container" else [kind, "ls"]
            out = self.command(*args, "--filter", flt, "--format", fmt, check=False)
            found[kind] = [line for line in out.splitlines() if line.strip()]
        return found

    def remove_project(self, project: str) -> None:
        left = self.project_objects(project)
        if left["container"]:
            self.command("rm", "-f", "-t", "5", *left["container"], check=False)
        if left["network"]:
            self.command("network", "rm", *left["network"], check=False)
        if left["volume"]:
            self.command("volume", "rm", "-f", *left["volume"], check=False)

    def close(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(20)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(5)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def probe_ulimits(env: dict[str, str], image: str) -> tuple[int, int]:
    """nofile and nproc values runc may set here, the highest that work; cached per host limits."""
    _, nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cache = STATE / "ulimits.json"
    key = f"{nproc_hard}/{nofile_hard}/{run(['podman', '--version']).stdout.strip()}"
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return int(cached["nofile"]), int(cached["nproc"])
    conf = STATE / "probe-containers.conf"
    for nofile in limit_candidates(nofile_hard, 1024):
        for nproc in limit_candidates(nproc_hard):
            conf.write_text(containers_conf(nofile, nproc))
            result = run(
                ["podman", "run", "--rm", "--network", "none", image, "true"],
                {**env, "CONTAINERS_CONF": str(conf)},
                timeout=120,
                check=False,
            )
            if result.returncode == 0:
                cache.write_text(json.dumps({"key": key, "nofile": nofile, "nproc": nproc}))
                return nofile, nproc
            if "rlimit" not in result.stderr:
                raise RuntimeError(f"podman cannot run a container here:\n{result.stderr}")
    raise RuntimeError("podman: no nofile/nproc limits runc may set were found")


def start_podman(ensure_base: Callable[[Engine], str]) -> Engine:
    """podman's Docker API on a socket of our own, its containers.conf probed on the base
    image ``ensure_base`` makes (it runs no container, so it needs no probed limits)."""
    install_missing(PACKAGES)
    STATE.mkdir(parents=True, exist_ok=True)
    env = {"CONTAINERS_CONF": str(STATE / "containers.conf")}
    if not (STATE / "containers.conf").exists():
        (STATE / "containers.conf").write_text(containers_conf(20000, 4096))
    base_image = ensure_base(Engine("podman", env))
    nofile, nproc = probe_ulimits(env, base_image)
    (STATE / "containers.conf").write_text(containers_conf(nofile, nproc))
    run_dir = Path(tempfile.mkdtemp(prefix="sluice-podman-"))
    socket = run_dir / "podman.sock"
    log = (run_dir / "service.log").open("ab")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    engine = Engine("podman", {**env, "DOCKER_HOST": f"unix://{socket}"}, service, run_dir)
    deadline = time.monotonic() + 30
    while not socket.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            text = (run_dir / "service.log").read_text(errors="replace")
            engine.close()
            raise RuntimeError(f"podman system service did not start:\n{text}")
        time.sleep(0.1)
    return engine


class Healthchecks:
    """What systemd's timers do for podman: each container's healthcheck, every ``interval``."""

    def __init__(self, engine: Engine, project: str, interval: float = 3.0) -> None:
        self.engine = engine
        self.project = project
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="healthchecks", daemon=True)

    def __enter__(self) -> Healthchecks:
        if self.engine.kind == "podman":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def run_once(self) -> None:
        for name in self.engine.project_objects(self.project)["container"]:
            if self._stop.is_set():
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                run(
                    ["podman", "healthcheck", "run", name], self.engine.env, timeout=15, check=False
                )

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)


def health(engine: Engine, names: Sequence[str]) -> dict[str, str]:
    """Each container's health status ("none" without a healthcheck) or its state if not running."""
    out = engine.command(
        "inspect",
        "--format",
        "{{.Name}} {{.State.Status}} "
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
        *names,
        check=False,
    )
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            name, state, status = parts
            found[name.lstrip("/")] = status if state == "running" else state
    return found


@contextlib.contextmanager
def engine_for(ensure_base: Callable[[Engine], str]) -> Iterator[Engine]:
    engine = Engine("docker") if docker_answers() else start_podman(ensure_base)
    try:
        yield engine
    finally:
        engine.close()
