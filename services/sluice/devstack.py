"""The local stack: how each process is started, for ``make run`` and the test suite alike.

``python -m sluice.devstack prepare`` renders the nginx configuration and a Procfile
into ``.run/`` (git-ignored) and prints the URLs; ``make run`` then hands the Procfile
to honcho. The tests start the same commands with other ports, so what is tested is
what runs.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = ROOT / "nginx"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
_PLACEHOLDER = re.compile(r"\$\{(SLUICE_[A-Z0-9_]+)\}")


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    factory: str  # gunicorn app spec
    port: int  # default local port

    @property
    def env_prefix(self) -> str:
        return "SLUICE_" + self.name.upper().replace("-", "_")


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service("demo", "demo.app:create_app()", 8001),
        Service("chat-proxy", "chat_proxy.app:create_app()", 8002),
        Service("progress", "progress.app:create_app()", 8003),
        Service("log-tail", "log_tail.app:create_app()", 8004),
        Service("mock-upstream", "mock_upstream.app:create_app()", 8009),
    )
}
NGINX_PORT = 8080


class TemplateError(ValueError):
    pass


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``${SLUICE_*}`` placeholders, as the nginx image's envsubst step does."""
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise TemplateError(f"no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
    return found


def write_nginx(
    prefix: Path, listen: str, upstreams: Mapping[str, str], access_log: str | None = None
) -> Path:
    """Render the local main config and the shared server config under ``prefix``."""
    prefix = prefix.resolve()
    for sub in ("conf.d", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    values = {
        "SLUICE_NGINX_PREFIX": str(prefix),
        "SLUICE_NGINX_LISTEN": listen,
        "SLUICE_NGINX_ACCESS_LOG": access_log or str(prefix / "access.log"),
    }
    for name, address in upstreams.items():
        values[SERVICES[name].env_prefix + "_ADDR"] = address
    main = render((NGINX_DIR / "local.conf.template").read_text(), values)
    (prefix / "nginx.conf").write_text(main)
    server = render((NGINX_DIR / "templates" / "sluice.conf.template").read_text(), values)
    (prefix / "conf.d" / "sluice.conf").write_text(server)
    return prefix / "nginx.conf"


def nginx_command(conf: Path) -> list[str]:
    prefix = conf.parent
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]


def service_command(service: Service, bind: str) -> tuple[list[str], dict[str, str]]:
    """The gunicorn command line and the environment it adds for one service."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    env = {"SLUICE_SERVICE_NAME": service.name, "SLUICE_BIND": bind}
    return [gunicorn, "-c", str(GUNICORN_CONF), service.factory], env


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, str(default))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"{name}={raw!r} is not a TCP port")
    return int(raw)


def dev_key(run_dir: Path, env: Mapping[str, str]) -> tuple[Path, str] | None:
    """With no keys configured, one generated dev key kept in ``run_dir`` (git-ignored)."""
    if env.get("SLUICE_API_KEYS") or env.get("SLUICE_API_KEYS_FILE"):
        return None
    path = run_dir / "dev-api-key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(f"sk-dev-{secrets.token_urlsafe(24)}\n")
    return path, path.read_text().strip()


def local_redis(run_dir: Path, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The Redis progress uses: the configured one, else a local redis-server if installed
    (started in the Procfile on its own port), else none (embedded mode)."""
    if env.get("SLUICE_REDIS_URL"):
        return env["SLUICE_REDIS_URL"], None
    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
    if binary is None or env.get("SLUICE_PROGRESS_MODE") == "embedded":
        return None, None
    port = _port(env, "SLUICE_LOCAL_REDIS_PORT", 6380)
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
    ]
    return f"redis://127.0.0.1:{port}/0", f"redis: {shlex.join(argv)}"


PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
WORKER_METRICS_PORT = 8013


def _prometheus_head(rules: str, interval: str) -> list[str]:
    return [
        "# Generated by sluice.devstack: do not edit by hand.",
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "rule_files:",
        f"  - {rules}",
        "scrape_configs:",
        "  - job_name: sluice",
    ]


def prometheus_config(targets: Mapping[str, str], rules: str, interval: str = "5s") -> str:
    """The scrape configuration, one source for every flavour: each service's own
    /metrics (never through nginx), labelled with its name, and the rule files."""
    lines = [*_prometheus_head(rules, interval), "    static_configs:"]
    for name, address in targets.items():
        lines += [f'      - targets: ["{address}"]', f"        labels: {{sluice_service: {name}}}"]
    return "\n".join(lines) + "\n"


def compose_prometheus_config() -> str:
    targets = {name: f"{name}:{s.port}" for name, s in SERVICES.items()}
    targets["progress-worker"] = f"progress-worker:{WORKER_METRICS_PORT}"
    return prometheus_config(targets, "rules/sluice.yml")


def k8s_prometheus_config() -> str:
    """In a cluster: the same job and labels, pods found by their prometheus.io annotations."""
    meta = "__meta_kubernetes_pod_"
    lines = [
        *_prometheus_head("rules/sluice.yml", "15s"),
        "    kubernetes_sd_configs:",
        "      - role: pod",
        "    relabel_configs:",
        f"      - source_labels: [{meta}annotation_prometheus_io_scrape]",
        "        action: keep",
        "        regex: 'true'",
        f"      - source_labels: [{meta}label_app_kubernetes_io_part_of]",
        "        action: keep",
        "        regex: sluice",
        f"      - source_labels: [{meta}annotation_prometheus_io_path]",
        "        target_label: __metrics_path__",
        "        regex: (.+)",
        f"      - source_labels: [__address__, {meta}annotation_prometheus_io_port]",
        "        target_label: __address__",
        "        regex: '([^:]+)(?::\\d+)?;(\\d+)'",
        "        replacement: '$1:$2'",
        f"      - source_labels: [{meta}label_app_kubernetes_io_name]",
        "        target_label: sluice_service",
        f"      - source_labels: [{meta}name]",
        "        target_label: pod",
    ]
    return "\n".join(lines) + "\n"


def prometheus_command(run_dir: Path, listen: str) -> list[str] | None:
    binary = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/sbin")
    if binary is None:
        return None
    return [
        binary,
        f"--config.file={run_dir / 'prometheus' / 'prometheus.yml'}",
        f"--storage.tsdb.path={run_dir / 'prometheus' / 'data'}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=2d",
    ]


def stack_logs(run_dir: Path) -> str:
    """What log-tail follows under make run: the stack's own logs."""
    run = run_dir.resolve()
    files = {"nginx": run / "nginx" / "access.log", "nginx-error": run / "nginx" / "error.log"}
    for name in SERVICES:
        if name != "log-tail":
            files[name] = run / "logs" / f"{name}.log"
    return ",".join(f"{name}={path}" for name, path in files.items())


def prepare(run_dir: Path, env: Mapping[str, str]) -> str:
    """Write ``run_dir``'s nginx config and Procfile; return what to print to the user."""
    nginx_port = _port(env, "SLUICE_NGINX_PORT", NGINX_PORT)
    generated = dev_key(run_dir, env)
    ports = {s.name: _port(env, s.env_prefix + "_PORT", s.port) for s in SERVICES.values()}
    upstreams = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    conf = write_nginx(run_dir / "nginx", f"127.0.0.1:{nginx_port}", upstreams)
    lines = [f"nginx: {shlex.join(nginx_command(conf))}"]
    redis_url, redis_line = local_redis(run_dir, env)
    if redis_line:
        lines.append(redis_line)
    for service in SERVICES.values():
        command, extra = service_command(service, upstreams[service.name])
        if generated is not None and service.name != "mock-upstream":
            extra["SLUICE_API_KEYS_FILE"] = str(generated[0])
        if service.name == "chat-proxy" and "SLUICE_UPSTREAM_BASE_URL" not in env:
            extra["SLUICE_UPSTREAM_BASE_URL"] = f"http://{upstreams['mock-upstream']}/v1"
        extra["SLUICE_LOG_FILE"] = str((run_dir / "logs" / f"{service.name}.log").resolve())
        if service.name == "log-tail" and "SLUICE_LOG_TAIL_FILES" not in env:
            extra["SLUICE_LOG_TAIL_FILES"] = stack_logs(run_dir)
        if service.name == "progress" and redis_url:
            extra["SLUICE_REDIS_URL"] = redis_url
            extra["SLUICE_WORKERS"] = "2"
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())
        lines.append(f"{service.name}: env {assignments} {shlex.join(command)}")
    run = run_dir.resolve()
    prometheus = prometheus_command(run, f"127.0.0.1:{_port(env, 'SLUICE_PROMETHEUS_PORT', 9090)}")
    if prometheus is not None:
        targets = dict(upstreams)
        if redis_url:
            worker_port = env.get("SLUICE_PROGRESS_WORKER_METRICS_PORT", str(WORKER_METRICS_PORT))
            targets["progress-worker"] = f"127.0.0.1:{worker_port}"
        (run / "prometheus").mkdir(parents=True, exist_ok=True)
        config = prometheus_config(targets, str(PROMETHEUS_DIR / "rules" / "sluice.yml"))
        (run / "prometheus" / "prometheus.yml").write_text(config)
        lines.append(f"prometheus: {shlex.join(prometheus)}")
    if redis_url:
        worker_env = {"SLUICE_SERVICE_NAME": "progress", "SLUICE_REDIS_URL": redis_url}
        if generated is not None:
            worker_env["SLUICE_API_KEYS_FILE"] = str(generated[0])
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in worker_env.items())
        python = shlex.quote(sys.executable)
        lines.append(f"progress-worker: env {assignments} {python} -m progress.worker")
        mode = f"progress: Redis mode ({redis_url}), jobs run by progress-worker\n"
    else:
        mode = "progress: embedded mode (no redis-server found): jobs run in-process\n"
    prometheus_note = (
        f"Prometheus: http://{prometheus[3].split('=', 1)[1]} (rules: deploy/prometheus/rules)\n"
        if prometheus is not None
        else "Prometheus: not installed (apt-get install prometheus), not started\n"
    )
    (run_dir / "Procfile").write_text("\n".join(lines) + "\n")
    base = f"http://127.0.0.1:{nginx_port}"
    services = "\n".join(
        f"  {name:<14} http://{addr}  (metrics: http://{addr}/metrics)"
        for name, addr in upstreams.items()
    )
    if generated is not None:
        key_note = (
            f"Dev API key (generated, kept in {generated[0]}):\n  {generated[1]}\n"
            f'  curl -N {base}/v1/chat/completions -H "Authorization: Bearer {generated[1]}" \\\n'
            f'    -H \'Content-Type: application/json\' -d \'{{"model": "mock-gpt", '
            f'"stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}\'\n'
        )
        key_note += f'  curl -N -H "Authorization: Bearer {generated[1]}" {base}/logs/nginx\n'
    else:
        key_note = "API keys: from SLUICE_API_KEYS / SLUICE_API_KEYS_FILE\n"
    return (
        f"Sluice is starting. Front door: {base}\n"
        f"  curl -N {base}/toy-stream\n"
        f"  curl -N {base}/dummy-counter\n"
        f"  curl -N {base}/dummy-events\n"
        f'  curl -N "{base}/chat-stream?prompt=Tell+a+story"\n'
        f"  curl -N {base}/progress\n"
        f"  curl -N {base}/logs\n"
        f"{key_note}"
        f"{mode}"
        f"{prometheus_note}"
        f"Services behind nginx:\n{services}\n"
        "Ctrl-C stops everything.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.devstack")
    parser.add_argument("command", choices=["prepare"])
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    args = parser.parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    print(prepare(args.run_dir, os.environ), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
