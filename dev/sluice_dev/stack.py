"""The local stack: how each process is started, for ``make run`` and the test suite alike.

``python -m sluice_dev run`` (what ``make run`` runs) checks every process's settings,
renders the nginx configuration and a Procfile into ``.run/`` (git-ignored) from the
services' declarations (``sluice.registry``), and runs the Procfile under honcho. It holds
the processes' boot logs back until every service answers ``/readyz`` (and nginx its
``/healthz``), then prints one line saying the stack is ready, with the URLs and the key,
and the logs below it. The tests start the same commands with other ports.

honcho reads no env file here: ``.env`` is compose's (it holds compose's keys), and honcho
would let it override what the user exported. Dependencies (nginx, Redis, Prometheus, the
companions such as job workers) run under ``sluice_dev.supervise``, so one dying does not
end the stack and Ctrl-C stops nginx gracefully; honcho waits for the longest graceful
timeout, so a drain is not cut short.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from sluice.registry import Registry, Service, registry
from sluice.serve import gunicorn_command
from sluice_dev import check, nginx, prometheus
from sluice_dev.project import Project

NGINX_PORT = 8080
REDIS_PORT = 6380
PROMETHEUS_PORT = 9090
READY_TIMEOUT = 90.0  # seconds make run waits for every /readyz before it shows the logs
HELD_LINES = 5000  # boot log lines held back at most (the oldest are dropped past it)
_REFERENCE = re.compile(r"\{([a-z][a-z0-9_-]*)\}")


def dev_port(env: Mapping[str, str], what: str, default: int, old: str | None = None) -> int:
    """``SLUICE_DEV_<WHAT>_PORT``: where make run puts a process (the dev group of settings).
    ``old`` is the name it had before (still read, with a warning, for one release)."""
    name = f"SLUICE_DEV_{what}_PORT"
    raw = env.get(name)
    if raw is None and old is not None and old in env:
        raw = env[old]
        print(f"make run: {old} is now {name} (the old name works until the next release)")
        name = old
    raw = str(default) if raw is None else raw
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"{name}={raw!r} is not a TCP port")
    return int(raw)


def service_port(env: Mapping[str, str], service: Service) -> int:
    what = service.env_prefix.removeprefix("SLUICE_")
    return dev_port(env, what, service.port, old=f"{service.env_prefix}_PORT")


def dev_key(run_dir: Path, env: Mapping[str, str]) -> tuple[Path, str] | None:
    """With no keys configured, one generated dev key kept in ``run_dir`` (git-ignored)."""
    if env.get("SLUICE_API_KEYS") or env.get("SLUICE_API_KEYS_FILE"):
        return None
    path = run_dir / "dev-api-key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(f"sk-dev-{secrets.token_urlsafe(24)}\n")
    return path, path.read_text().strip()


def local_redis(
    run_dir: Path, env: Mapping[str, str], wanted: bool
) -> tuple[str | None, list[str] | None]:
    """The Redis the services that use one get: the configured one, else a local
    redis-server if installed and a service uses Redis (started in the Procfile on its own
    port), else none (those services run embedded)."""
    if env.get("SLUICE_REDIS_URL"):
        return env["SLUICE_REDIS_URL"], None
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
    if env.get("SLUICE_PROGRESS_MODE") == "embedded" and "SLUICE_DEV_REDIS" not in env:
        print(
            "make run: SLUICE_PROGRESS_MODE=embedded is now SLUICE_DEV_REDIS=off"
            " (the old name works until the next release)"
        )
        env = {**env, "SLUICE_DEV_REDIS": "off"}
    if env.get("SLUICE_DEV_REDIS", "on") not in ("on", "off"):
        raise SystemExit(f"SLUICE_DEV_REDIS={env['SLUICE_DEV_REDIS']!r} is not on or off")
    if binary is None or not wanted or env.get("SLUICE_DEV_REDIS") == "off":
        return None, None
    port = dev_port(env, "REDIS", REDIS_PORT, old="SLUICE_LOCAL_REDIS_PORT")
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(data)]
    return f"redis://127.0.0.1:{port}/0", argv


def stack_logs(run_dir: Path, services: Registry, but: str) -> str:
    """Every log file of the stack but ``but``'s own (log-tail must not follow itself)."""
    run = run_dir.resolve()
    files = {"nginx": run / "nginx" / "access.log", "nginx-error": run / "nginx" / "error.log"}
    for service in services:
        if service.name != but:
            files[service.name] = run / "logs" / f"{service.name}.log"
    return ",".join(f"{name}={path}" for name, path in files.items())


def dev_value(template: str, addresses: Mapping[str, str], logs: str) -> str:
    """A ``dev_env`` value: ``{service}`` is its local address, ``{stack_logs}`` the logs."""

    def one(match: re.Match[str]) -> str:
        name = match[1]
        if name == "stack_logs":
            return logs
        if name not in addresses:
            raise SystemExit(f"make run: {template!r} names {name!r}, which is not a service")
        return addresses[name]

    return _REFERENCE.sub(one, template)


def supervised(name: str, argv: Sequence[str], kill_after: float, stop: str = "TERM") -> str:
    """A Procfile command for a dependency: kept alive, stopped with ``stop`` (supervise)."""
    python = shlex.quote(sys.executable)
    head = f"{python} -m sluice_dev.supervise --name {name} --stop-signal {stop}"
    return f"{head} --kill-after {kill_after:g} -- {shlex.join(argv)}"


def service_envs(
    run_dir: Path,
    env: Mapping[str, str],
    services: Registry,
    addresses: Mapping[str, str],
    redis_url: str | None,
    generated: tuple[Path, str] | None,
    project: Project,
) -> dict[str, dict[str, str]]:
    """What the Procfile adds to the environment of each service."""
    extras: dict[str, dict[str, str]] = {}
    for service in services:
        _, extra = gunicorn_command(service, addresses[service.name], project.gunicorn_conf)
        if generated is not None and service.api_keys:
            extra["SLUICE_API_KEYS_FILE"] = str(generated[0])
        logs = stack_logs(run_dir, services, but=service.name)
        for name, value in service.dev_env.items():
            if name not in env:
                extra[name] = dev_value(value, addresses, logs)
        extra["SLUICE_LOG_FILE"] = str((run_dir / "logs" / f"{service.name}.log").resolve())
        extra["PYTHONPATH"] = search_path(project, env)
        if service.uses_redis and redis_url:
            extra["SLUICE_REDIS_URL"] = redis_url
            for name, value in service.dev_env_redis.items():
                if name not in env:
                    extra[name] = dev_value(value, addresses, logs)
        extras[service.name] = extra
    return extras


def search_path(project: Project, env: Mapping[str, str]) -> str:
    """The processes' PYTHONPATH: the project's services first (its own ones included)."""
    rest = env.get("PYTHONPATH", "")
    return str(project.services_dir) + (os.pathsep + rest if rest else "")


def env_note(project_dir: Path) -> str:
    note = "Environment: your shell's (make run reads no env file)"
    if (project_dir / ".env").exists():
        note += f"; {project_dir / '.env'} is compose's and is not read"
    return note + "\n"


def examples(services: Registry, base: str, key: str | None) -> list[str]:
    """A curl line per example the services declare; with the key where one is needed."""
    lines: list[str] = []
    for service in services.public():
        for example in service.examples:
            if example.partition("?")[0] in service.public_routes:
                lines.append(f'  curl -N "{base}{example}"')
            elif key is not None:
                lines.append(f'  curl -N -H "Authorization: Bearer {key}" "{base}{example}"')
    return lines


def prepare(run_dir: Path, env: Mapping[str, str], project: Project) -> str:
    """Check every process's settings, write ``run_dir``'s nginx config, Procfile and
    readiness list; return what to print first. Bad settings: SystemExit with one line
    each, nothing written."""
    services = registry()
    nginx_port = dev_port(env, "NGINX", NGINX_PORT, old="SLUICE_NGINX_PORT")
    addresses = {s.name: f"127.0.0.1:{service_port(env, s)}" for s in services}
    redis_url, redis_argv = local_redis(run_dir, env, any(s.uses_redis for s in services))
    generated = dev_key(run_dir, env)
    extras = service_envs(run_dir, env, services, addresses, redis_url, generated, project)
    bad, longest_graceful = check.check(
        {name: (services[name].settings, {**env, **extra}) for name, extra in extras.items()}
    )
    if bad:
        raise SystemExit(
            "make run: bad settings, nothing started:\n" + "".join(f"  {b}\n" for b in bad)
        )
    stop_wait = longest_graceful + 5  # honcho's wait before SIGKILL: past every drain
    (run_dir / "stop-timeout").write_text(f"{stop_wait:g}\n")
    public = {s.name: addresses[s.name] for s in services.public()}
    conf = nginx.write(project.nginx_dir, run_dir / "nginx", f"127.0.0.1:{nginx_port}", public)
    kill_after = longest_graceful + 2
    # nginx stops on SIGQUIT gracefully: streams end as their services drain them.
    lines = [f"nginx: {supervised('nginx', nginx.command(conf), kill_after, 'QUIT')}"]
    if redis_argv:
        lines.append(f"redis: {supervised('redis', redis_argv, kill_after)}")
    base = f"http://127.0.0.1:{nginx_port}"
    ready = [f"{base}/healthz"]
    for service in services:
        command, _ = gunicorn_command(service, addresses[service.name], project.gunicorn_conf)
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in extras[service.name].items())
        lines.append(f"{service.name}: env {assignments} {shlex.join(command)}")
        ready.append(f"http://{addresses[service.name]}/readyz")
    targets = dict(addresses)
    for service in services:
        for companion in service.companions:
            if companion.needs_redis and not redis_url:
                continue
            port = env.get(companion.port_variable, str(companion.metrics_port))
            companion_env = {"SLUICE_SERVICE_NAME": service.name, companion.port_variable: port}
            if redis_url:
                companion_env["SLUICE_REDIS_URL"] = redis_url
            if generated is not None and service.api_keys:
                companion_env["SLUICE_API_KEYS_FILE"] = str(generated[0])
            companion_env["PYTHONPATH"] = search_path(project, env)
            worker = ["env", *(f"{k}={v}" for k, v in companion_env.items())]
            worker += [sys.executable, "-m", companion.module]
            lines.append(f"{companion.name}: {supervised(companion.name, worker, kill_after)}")
            if port != "0":
                targets[companion.name] = f"127.0.0.1:{port}"
                ready.append(f"http://127.0.0.1:{port}/")
    run = run_dir.resolve()
    prometheus_port = dev_port(env, "PROMETHEUS", PROMETHEUS_PORT, old="SLUICE_PROMETHEUS_PORT")
    prometheus_argv = prometheus.command(run / "prometheus", f"127.0.0.1:{prometheus_port}")
    if prometheus_argv is not None:
        (run / "prometheus").mkdir(parents=True, exist_ok=True)
        config = prometheus.config(targets, str(project.rules))
        (run / "prometheus" / "prometheus.yml").write_text(config)
        lines.append(f"prometheus: {supervised('prometheus', prometheus_argv, 10)}")
    (run_dir / "Procfile").write_text("\n".join(lines) + "\n")
    # Every port the stack will listen on, by who listens: checked free before it starts.
    ports = {"nginx": nginx_port, **{n: int(a.rpartition(":")[2]) for n, a in targets.items()}}
    if redis_url and redis_argv:
        ports["redis"] = int(redis_url.rpartition(":")[2].split("/")[0])
    if prometheus_argv is not None:
        ports["prometheus"] = prometheus_port

    users = ", ".join(s.name for s in services if s.uses_redis)
    if not users:
        redis_note = ""
    elif redis_url:
        redis_note = f"Redis: {redis_url} (used by {users})\n"
    else:
        redis_note = f"Redis: none (no redis-server found): {users} run embedded\n"
    prometheus_note = (
        f"Prometheus: http://127.0.0.1:{prometheus_port} (rules: {project.rules})\n"
        if prometheus_argv is not None
        else "Prometheus: not installed (apt-get install prometheus), not started\n"
    )
    listing = "\n".join(
        f"  {name:<16} http://{address}  (metrics: http://{address}/metrics)"
        for name, address in targets.items()
    )
    key = generated[1] if generated is not None else None
    if generated is not None:
        key_note = f"Dev API key (generated, kept in {generated[0]}): {generated[1]}\n"
    else:
        source = [n for n in ("SLUICE_API_KEYS", "SLUICE_API_KEYS_FILE") if env.get(n)]
        key_note = f"API keys: from {' and '.join(source)} in your environment\n"
    details = (
        "Try:\n"
        + "".join(f"{line}\n" for line in examples(services, base, key))
        + key_note
        + env_note(project.root)
        + redis_note
        + prometheus_note
        + f"Processes:\n{listing}\n"
        + f"Ctrl-C stops everything: open streams are drained first (up to {stop_wait:g} s).\n"
    )
    said_key = f"; key: {key}" if key is not None else ""
    banner = f"Sluice is ready: {base}{said_key} (every service answers /readyz; logs below)\n"
    plan = run_dir / "ready.json"  # it says the dev key: as private as the key's own file
    plan.touch(mode=0o600)
    plan.chmod(0o600)
    plan.write_text(
        json.dumps({"urls": ready, "banner": banner, "details": details, "ports": ports})
    )
    count = len(lines)
    return f"Sluice is starting: {count} processes; it says when it is ready ({run_dir}).\n"


def honcho_args(run_dir: Path, project_dir: Path) -> list[str]:
    """honcho's command line: the Procfile, and no env file (``-e`` /dev/null, not ``.env``)."""
    return ["start", "-f", str(run_dir / "Procfile"), "-d", str(project_dir), "-e", os.devnull]


def honcho(run_dir: Path, project_dir: Path) -> int:
    """Run the prepared Procfile under honcho, in this process (``start`` runs this)."""
    from honcho import command, manager

    # honcho kills what is left 5 s (a constant) after Ctrl-C: the drain window is longer.
    manager.KILL_WAIT = float((run_dir / "stop-timeout").read_text())
    signal.signal(ORPHANED, _orphaned)
    if os.getppid() == 1:  # the parent died before the line above: stop at once
        _orphaned(ORPHANED, None)
    try:
        command.main(honcho_args(run_dir, project_dir))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via http_proxy


def taken(ports: Mapping[str, int]) -> list[str]:
    """The ports something already listens on (an old stack's, another program's)."""
    busy = []
    for name, port in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{port} ({name})")
    return busy


def _answers(url: str) -> bool:
    try:
        with _LOCAL.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class _Output:
    """honcho's output: held back (bounded) until the stack is ready, then passed through."""

    def __init__(self, source: IO[bytes], sink: IO[bytes]) -> None:
        self.source, self.sink = source, sink
        self.held: deque[bytes] = deque(maxlen=HELD_LINES)
        self.dropped = 0
        self.lock = threading.Lock()
        self.passing = False
        self.thread = threading.Thread(target=self._pump, name="honcho-output", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in iter(self.source.readline, b""):
            with self.lock:
                if self.passing:
                    self.sink.write(line)
                    self.sink.flush()
                    continue
                if len(self.held) == self.held.maxlen:
                    self.dropped += 1
                self.held.append(line)

    def release(self, first: str) -> None:
        """Write ``first``, then what was held, then pass everything through."""
        with self.lock:
            self.sink.write(first.encode())
            if self.dropped:
                self.sink.write(f"({self.dropped} earlier log lines not shown)\n".encode())
            self.sink.writelines(self.held)
            self.held.clear()
            self.sink.flush()
            self.passing = True


# The signal honcho's process gets when ``start`` dies (PR_SET_PDEATHSIG). Not SIGTERM
# itself: honcho's own handler would print to the pipe nobody reads any more, die of the
# broken pipe and leave every process of the stack running.
ORPHANED = signal.SIGUSR1


def _orphaned(_signum: int, _frame: FrameType | None) -> None:
    """Nobody reads our output now: write it nowhere, then stop the stack as Ctrl-C does."""
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, 1)
    os.dup2(nowhere, 2)
    os.kill(os.getpid(), signal.SIGTERM)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, ORPHANED)  # PR_SET_PDEATHSIG


def start(run_dir: Path, project_dir: Path, ready_timeout: float = READY_TIMEOUT) -> int:
    """Run honcho (in a session of its own: Ctrl-C reaches it once, from here), hold its
    logs until every process answers, say so in one line, then pass its output through."""
    plan = json.loads((run_dir / "ready.json").read_text())
    busy = taken(plan.get("ports", {}))
    if busy:  # else an old stack there would answer /readyz, and this one be called ready
        print(
            f"make run: in use already: {', '.join(busy)}; stop what listens there (an earlier"
            " make run?) or move this stack (SLUICE_DEV_<NAME>_PORT)",
            flush=True,
        )
        return 1
    argv = [sys.executable, "-m", "sluice_dev", "--project-dir", str(project_dir)]
    argv += ["honcho", "--run-dir", str(run_dir)]
    child = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    assert child.stdout is not None

    def forward(signum: int, _frame: FrameType | None) -> None:
        # A closed terminal (SIGHUP) stops the stack as Ctrl-C does; honcho knows no SIGHUP.
        child.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    output = _Output(child.stdout, sys.stdout.buffer)
    deadline = time.monotonic() + ready_timeout
    waiting = list(plan["urls"])
    while waiting and child.poll() is None and time.monotonic() < deadline:
        waiting = [url for url in waiting if not _answers(url)]
        if waiting:
            time.sleep(0.25)
    if child.poll() is not None:
        output.release("Sluice stopped before it was ready; its logs:\n")
    elif waiting:
        output.release(
            f"Sluice is NOT ready after {ready_timeout:g} s: no answer from"
            f" {', '.join(waiting)}; the logs say why:\n"
        )
    else:
        output.release(plan["banner"] + plan["details"] + "--- logs ---\n")
    code = child.wait()
    output.thread.join(timeout=5)
    return code
