"""Real processes for the tests: started on free ports, stopped by pid, logs kept in files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sluice.procfs import children
from sluice.registry import registry
from sluice.serve import gunicorn_command
from sluice_dev import nginx, prometheus, stack
from sluice_dev.project import Project
from tests.support.paths import ROOT

PROJECT = Project.at(ROOT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


def start(
    name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Proc:
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("ab")
    popen = subprocess.Popen(
        list(argv),
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    handle.close()
    return Proc(name, popen, log_path)


def wait_http(url: str, proc: Proc | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log()}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not up after {timeout}s: {last}")


def start_service(
    name: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Proc:
    """One service under real gunicorn with uvicorn workers, as make run starts it (on
    another loopback address than 127.0.0.1 when told: a fleet of replicas on one port)."""
    service = registry()[name]
    port = port or free_port()
    argv, service_env = gunicorn_command(service, f"{host}:{port}")
    # A port is free again once its process is gone: a later service may get it, so the
    # folder is made unique, not named by the port alone.
    metrics_dir = Path(tempfile.mkdtemp(prefix=f"metrics-{name}-{port}-", dir=log_dir))
    full_env = {
        **service_env,
        "SLUICE_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **(env or {}),
    }
    proc = start(f"{name}-{host}-{port}", argv, log_dir, full_env)
    proc.port = port
    proc.host = host
    wait_http(f"{proc.url}/healthz", proc)
    # Every worker, not just the first to answer, must be up (its SIGTERM drain installed).
    # (It says so at INFO; a quieter log level leaves only the health check.)
    deadline = time.monotonic() + 20
    quiet = full_env.get("SLUICE_LOG_LEVEL", "INFO") not in ("DEBUG", "INFO")
    while not quiet and proc.log().count('"msg": "service started"') < workers:
        if time.monotonic() > deadline or proc.popen.poll() is not None:
            raise RuntimeError(f"{name}: not all {workers} workers started:\n{proc.log()}")
        time.sleep(0.05)
    return proc


def start_nginx(upstreams: Mapping[str, str], log_dir: Path) -> Proc:
    """nginx with the shipped config; services not given point at a closed port (502)."""
    port = free_port()
    prefix = log_dir / f"nginx-{port}"
    closed = f"127.0.0.1:{free_port()}"
    every = {s.name: upstreams.get(s.name, closed) for s in registry().public()}
    conf = nginx.write(PROJECT.nginx_dir, prefix, f"127.0.0.1:{port}", every)
    proc = start(f"nginx-{port}", nginx.command(conf), log_dir)
    proc.port = port
    proc.extra["access_log"] = str(prefix / "access.log")
    wait_http(f"{proc.url}/healthz", proc)
    return proc


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


def worker_pids(master: Proc) -> list[int]:
    """The gunicorn worker pids of a master, from /proc."""
    return children(master.pid)


def start_redis(log_dir: Path, args: Sequence[str] = (), port: int | None = None) -> Proc:
    """``args`` override the defaults (``--appendonly yes`` ...); ``port`` restarts one."""
    port = port or free_port()
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = start(f"redis-{port}", [*argv, *args], log_dir)
    proc.port = port
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.popen.poll() is not None:
            raise RuntimeError(f"redis did not start:\n{proc.log()}")
        time.sleep(0.05)
    proc.extra["url"] = f"redis://127.0.0.1:{port}/0"
    return proc


def start_prometheus(targets: Mapping[str, str], log_dir: Path, interval: str = "1s") -> Proc:
    """A real Prometheus scraping ``targets`` with the shipped rules."""
    port = free_port()
    folder = log_dir / f"prometheus-{port}"
    folder.mkdir()
    (folder / "prometheus.yml").write_text(prometheus.config(targets, str(PROJECT.rules), interval))
    argv = prometheus.command(folder, f"127.0.0.1:{port}")
    assert argv is not None, "prometheus is not installed"
    proc = start(f"prometheus-{port}", argv, log_dir)
    proc.port = port
    wait_http(f"{proc.url}/-/ready", proc)
    return proc


@dataclass
class LocalStack:
    """`make run`'s own Procfile under honcho, every port a free one."""

    proc: Proc
    env: dict[str, str]
    key: str
    base: str
    printed: str

    def stop(self) -> int | None:
        self.proc.popen.send_signal(signal.SIGINT)  # what Ctrl-C sends
        return self.proc.popen.wait(30)


STACK_PORTS = ("NGINX", "REDIS", "PROMETHEUS", *(s.env_prefix[7:] for s in registry()))
READY = "Sluice is ready: "


def start_local_stack(
    run_dir: Path, log_dir: Path, extra: Mapping[str, str] | None = None
) -> LocalStack:
    """``python -m sluice_dev start`` as make run runs it, on free ports; returned once it
    has said it is ready (and not before: what it says must be true when it says it)."""
    env = {f"SLUICE_DEV_{name}_PORT": str(free_port()) for name in STACK_PORTS}
    env["SLUICE_PROGRESS_WORKER_METRICS_PORT"] = "0"
    env.update(extra or {})
    printed = stack.prepare(run_dir, env, PROJECT)
    key = (run_dir / "dev-api-key").read_text().strip()
    # make run's own start (honcho, no env file); run_dir stands for the project (.env's home)
    start_argv = [sys.executable, "-m", "sluice_dev", "--project-dir", str(ROOT), "start"]
    proc = start(
        f"stack-{env['SLUICE_DEV_NGINX_PORT']}",
        [*start_argv, "--run-dir", str(run_dir)],
        log_dir,
        env,
    )
    base = f"http://127.0.0.1:{env['SLUICE_DEV_NGINX_PORT']}"
    local = LocalStack(proc, env, key, base, printed)
    try:
        deadline = time.monotonic() + stack.READY_TIMEOUT + 10
        while READY not in proc.log():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stack never said it was ready:\n{proc.log()}")
            time.sleep(0.05)
        local.printed += proc.log()
    except BaseException:
        local.stop()
        raise
    return local
