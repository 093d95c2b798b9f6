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

from sluice import devstack
from sluice.handoff import children


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

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
        cwd=devstack.ROOT,
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
    name: str, log_dir: Path, env: Mapping[str, str] | None = None, workers: int = 2
) -> Proc:
    """One service under real gunicorn with uvicorn workers, as make run starts it."""
    service = devstack.SERVICES[name]
    port = free_port()
    argv, service_env = devstack.service_command(service, f"127.0.0.1:{port}")
    # A port is free again once its process is gone: a later service may get it, so the
    # folder is made unique, not named by the port alone.
    metrics_dir = Path(tempfile.mkdtemp(prefix=f"metrics-{name}-{port}-", dir=log_dir))
    full_env = {
        **service_env,
        "SLUICE_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **(env or {}),
    }
    proc = start(f"{name}-{port}", argv, log_dir, full_env)
    proc.port = port
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
    every = {name: upstreams.get(name, closed) for name in devstack.SERVICES}
    conf = devstack.write_nginx(prefix, f"127.0.0.1:{port}", every)
    proc = start(f"nginx-{port}", devstack.nginx_command(conf), log_dir)
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
    rules = devstack.PROMETHEUS_DIR / "rules" / "sluice.yml"
    (folder / "prometheus.yml").write_text(
        devstack.prometheus_config(targets, str(rules), interval)
    )
    argv = devstack.prometheus_command(folder.parent, f"127.0.0.1:{port}")
    assert argv is not None, "prometheus is not installed"
    argv = [a.replace(str(folder.parent / "prometheus"), str(folder)) for a in argv]
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


STACK_PORTS = (
    "NGINX",
    "DEMO",
    "CHAT_PROXY",
    "PROGRESS",
    "LOG_TAIL",
    "MOCK_UPSTREAM",
    "LOCAL_REDIS",
    "PROMETHEUS",
)


def start_local_stack(
    run_dir: Path, log_dir: Path, extra: Mapping[str, str] | None = None
) -> LocalStack:
    env = {f"SLUICE_{name}_PORT": str(free_port()) for name in STACK_PORTS}
    env["SLUICE_PROGRESS_WORKER_METRICS_PORT"] = "0"
    env.update(extra or {})
    printed = devstack.prepare(run_dir, env)
    key = (run_dir / "dev-api-key").read_text().strip()
    # make run's own start (honcho, no env file); run_dir stands for the app root (.env's home)
    start_argv = [sys.executable, "-m", "sluice.devstack", "start", "--run-dir", str(run_dir)]
    proc = start(
        f"stack-{env['SLUICE_NGINX_PORT']}",
        [*start_argv, "--app-root", str(run_dir)],
        log_dir,
        env,
    )
    stack = LocalStack(proc, env, key, f"http://127.0.0.1:{env['SLUICE_NGINX_PORT']}", printed)
    try:
        for name in ("DEMO", "CHAT_PROXY", "PROGRESS", "LOG_TAIL", "MOCK_UPSTREAM"):
            wait_http(f"http://127.0.0.1:{env[f'SLUICE_{name}_PORT']}/readyz", proc, timeout=30)
        wait_http(f"{stack.base}/healthz", proc, timeout=10)
    except BaseException:
        stack.stop()
        raise
    return stack
