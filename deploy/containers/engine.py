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
import re
import resource
import secrets
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
# Package -> the files that show it is installed (a name on PATH, or an absolute path: podman's
# helpers live in /usr/lib/podman). Installed explicitly, with --no-install-recommends:
# aardvark-dns is only a Recommends of netavark (without it compose service names do not
# resolve), iptables only a Suggests; catatonit is the pause process of pods (kube play builds
# its pause image from it).
PACKAGES: dict[str, tuple[str, ...]] = {
    "podman": ("podman",),
    "runc": ("runc",),
    "debootstrap": ("debootstrap",),
    "catatonit": ("catatonit", "/usr/libexec/podman/catatonit"),
    "netavark": ("/usr/lib/podman/netavark", "/usr/libexec/podman/netavark"),
    "aardvark-dns": ("/usr/lib/podman/aardvark-dns", "/usr/libexec/podman/aardvark-dns"),
    "iptables": ("iptables",),
    "uidmap": ("newuidmap", "newgidmap"),
    "slirp4netns": ("slirp4netns",),
    "fuse-overlayfs": ("fuse-overlayfs",),
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


def installed(files: Sequence[str]) -> bool:
    """One of ``files`` (alternatives for one package) is there: a name on PATH (or in
    /usr/sbin, off a user's PATH), or an absolute path."""
    for name in files:
        if name.startswith("/"):
            if Path(name).exists():
                return True
            continue
        if shutil.which(name) is not None or Path(f"/usr/sbin/{name}").exists():
            return True
    return False


def missing_packages(packages: dict[str, tuple[str, ...]]) -> list[str]:
    return [pkg for pkg, files in packages.items() if not installed(files)]


def apt_candidate(package: str) -> bool:
    """``apt-cache policy`` knows a version of ``package`` it could install."""
    out = run(["apt-cache", "policy", package], timeout=60, check=False).stdout
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            return value.strip() not in ("", "(none)")
    return False


def install_missing(packages: dict[str, tuple[str, ...]]) -> None:
    """apt-get install what is missing (every package listed, explicitly: no Recommends)."""
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineUnavailable(
            "no Docker engine answers and podman cannot be installed (not root): "
            f"sudo apt-get install --no-install-recommends {' '.join(missing)}, "
            "or point DOCKER_HOST at an engine"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not all(apt_candidate(pkg) for pkg in missing):
        run(["apt-get", "update", "-qq"], env, timeout=600)
        unknown = [pkg for pkg in missing if not apt_candidate(pkg)]
        if unknown:
            raise EngineUnavailable(
                f"apt knows no installable version of {' '.join(unknown)} even after "
                "apt-get update: enable Debian's main archive (bookworm or later)"
            )
    print(f"apt-get install: {' '.join(missing)}", flush=True)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env, timeout=1200)
    still = missing_packages({pkg: packages[pkg] for pkg in missing})
    if still:
        raise EngineUnavailable(f"apt-get installed {' '.join(still)} but their files are absent")


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


# runc's "error setting rlimit type N": 6 is RLIMIT_NPROC, 7 RLIMIT_NOFILE (Linux numbering).
RLIMIT_TYPE = re.compile(r"rlimit type (\d+)")
PROBE_TRIES = 8
PROBE_TIMEOUT = 20.0


def choose_ulimits(
    attempt: Callable[[int, int], str | None],
    nofile_hard: int,
    nproc_hard: int,
    tries: int = PROBE_TRIES,
) -> tuple[int, int, int]:
    """The highest (nofile, nproc) runc may set: both at the host's hard limits, then halving
    the one runc names (both when it names neither), at most ``tries`` attempts. ``attempt``
    returns None when a container started, else runc's error. Returns (nofile, nproc, tries)."""
    nofiles = limit_candidates(nofile_hard, 1024)
    nprocs = limit_candidates(nproc_hard)
    i = j = 0
    error = ""
    for used in range(1, tries + 1):
        found = attempt(nofiles[i], nprocs[j])
        if found is None:
            return nofiles[i], nprocs[j], used
        error = found
        if "rlimit" not in error:
            raise RuntimeError(f"podman cannot run a container here:\n{error}")
        named = RLIMIT_TYPE.search(error)
        kind = int(named.group(1)) if named else None
        moved = False
        if kind in (None, resource.RLIMIT_NOFILE) and i + 1 < len(nofiles):
            i, moved = i + 1, True
        if kind in (None, resource.RLIMIT_NPROC) and j + 1 < len(nprocs):
            j, moved = j + 1, True
        if not moved:
            break
    raise RuntimeError(
        f"podman: no nofile/nproc limits runc may set were found (last tried nofile="
        f"{nofiles[i]} nproc={nprocs[j]}, hard limits {nofile_hard}/{nproc_hard}):\n{error}"
    )


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
    """nofile and nproc values runc may set here, the highest that work (a handful of tries of
    a few seconds each); cached per host limits and podman version."""
    _, nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cache = STATE / "ulimits.json"
    key = f"{nproc_hard}/{nofile_hard}/{run(['podman', '--version']).stdout.strip()}"
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return int(cached["nofile"]), int(cached["nproc"])
    conf = STATE / "probe-containers.conf"

    def attempt(nofile: int, nproc: int) -> str | None:
        conf.write_text(containers_conf(nofile, nproc))
        try:
            result = run(
                ["podman", "run", "--rm", "--network", "none", image, "/usr/bin/true"],
                {**env, "CONTAINERS_CONF": str(conf)},
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"podman run did not finish in {PROBE_TIMEOUT:.0f} s (not an rlimit error)"
        return None if result.returncode == 0 else result.stderr

    nofile, nproc, tries = choose_ulimits(attempt, nofile_hard, nproc_hard)
    print(
        f"podman ulimits: nofile={nofile} nproc={nproc} (host hard limits {nofile_hard}/"
        f"{nproc_hard}, {tries} tries)",
        flush=True,
    )
    cache.write_text(json.dumps({"key": key, "nofile": nofile, "nproc": nproc}))
    return nofile, nproc


def probe_name_resolution(
    env: dict[str, str], image: str, tries: int = 5, network_args: Sequence[str] = ()
) -> None:
    """Two containers on one network resolve each other's names (aardvark-dns, which compose
    service names and kube's Service aliases need), or a clear error. ``network_args`` go to
    ``network create`` (a test's ``--disable-dns`` shows the failure)."""
    tag = f"sluiceprobe{os.getpid()}x{secrets.token_hex(3)}"
    server, client = f"{tag}-a", f"{tag}-b"
    output = ""
    try:
        run(["podman", "network", "create", *network_args, tag], env, timeout=30)
        on_network = ["--rm", "--network", tag, image]
        sleeper = ["/usr/bin/sleep", "60"]
        run(["podman", "run", "-d", "--name", server, *on_network, *sleeper], env, timeout=30)
        for _ in range(tries):
            result = run(
                [
                    "podman",
                    "run",
                    "--name",
                    client,
                    *on_network,
                    "/usr/bin/getent",
                    "hosts",
                    server,
                ],
                env,
                timeout=30,
                check=False,
            )
            output = result.stdout + result.stderr
            if result.returncode == 0 and result.stdout.strip():
                return
            time.sleep(1)
    finally:
        for name in (client, server):
            run(["podman", "rm", "-f", "-t", "0", name], env, timeout=30, check=False)
        run(["podman", "network", "rm", "-f", tag], env, timeout=30, check=False)
    raise EngineUnavailable(
        f"two containers on one podman network do not resolve each other's names ({client} "
        f"looked up {server} {tries} times: {output.strip() or 'no answer'}); compose service "
        "names need aardvark-dns: apt-get install --no-install-recommends aardvark-dns "
        "netavark, and `podman info --format '{{.Host.NetworkBackend}}'` must say netavark"
    )


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
    probe_name_resolution(env, base_image)
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
def podman_for(ensure_base: Callable[[Engine], str]) -> Iterator[Engine]:
    """podman (installed when missing, as root) whatever else answers: kube play needs it."""
    engine = start_podman(ensure_base)
    try:
        yield engine
    finally:
        engine.close()


@contextlib.contextmanager
def engine_for(ensure_base: Callable[[Engine], str]) -> Iterator[Engine]:
    if not docker_answers():
        with podman_for(ensure_base) as podman:
            yield podman
        return
    engine = Engine("docker")
    try:
        yield engine
    finally:
        engine.close()
