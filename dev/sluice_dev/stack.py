"""The local stack: how each process is started, for ``make run`` and the test suite alike.

``python -m sluice.devstack run`` (what ``make run`` runs) checks every process's
settings, renders the nginx configuration and a Procfile into ``.run/`` (git-ignored),
prints the URLs and hands the Procfile to honcho (``start``). The tests start the same
commands with other ports, so what is tested is what runs.

honcho reads no env file here: ``.env`` is compose's (it holds compose's keys), and honcho
would let it override what the user exported. Dependencies (nginx, Redis, Prometheus, the
progress worker) run under ``sluice.supervise``, so one dying does not end the stack and
Ctrl-C stops nginx gracefully; honcho waits for the longest graceful timeout, so a drain
is not cut short.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sluice import devcheck

ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = ROOT / "nginx"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
_PLACEHOLDER = re.compile(r"\$\{(SLUICE_[A-Z0-9_]+)\}")


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    factory: str  # gunicorn app spec
    port: int  # default local port
    settings: str  # its settings class, module:Class

    @property
    def env_prefix(self) -> str:
        return "SLUICE_" + self.name.upper().replace("-", "_")


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service("demo", "demo.app:create_app()", 8001, "demo.settings:DemoSettings"),
        Service(
            "chat-proxy", "chat_proxy.app:create_app()", 8002, "chat_proxy.settings:ChatSettings"
        ),
        Service(
            "progress", "progress.app:create_app()", 8003, "progress.settings:ProgressSettings"
        ),
        Service("log-tail", "log_tail.app:create_app()", 8004, "log_tail.settings:LogTailSettings"),
        Service(
            "mock-upstream",
            "mock_upstream.app:create_app()",
            8009,
            "mock_upstream.settings:MockSettings",
        ),
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


def local_redis(run_dir: Path, env: Mapping[str, str]) -> tuple[str | None, list[str] | None]:
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
    return f"redis://127.0.0.1:{port}/0", argv


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


def supervised(name: str, argv: Sequence[str], kill_after: float, stop: str = "TERM") -> str:
    """A Procfile command for a dependency: kept alive, stopped with ``stop`` (sluice.supervise)."""
    python = shlex.quote(sys.executable)
    head = f"{python} -m sluice.supervise --name {name} --stop-signal {stop}"
    return f"{head} --kill-after {kill_after:g} -- {shlex.join(argv)}"


def service_envs(
    run_dir: Path,
    env: Mapping[str, str],
    upstreams: Mapping[str, str],
    redis_url: str | None,
    generated: tuple[Path, str] | None,
) -> dict[str, dict[str, str]]:
    """What the Procfile adds to the environment of each service."""
    extras: dict[str, dict[str, str]] = {}
    for service in SERVICES.values():
        _, extra = service_command(service, upstreams[service.name])
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
        extras[service.name] = extra
    return extras


def env_note(app_root: Path) -> str:
    note = "Environment: your shell's (make run reads no env file)"
    if (app_root / ".env").exists():
        note += f"; {app_root / '.env'} is compose's and is not read"
    return note + "\n"


def prepare(run_dir: Path, env: Mapping[str, str], app_root: Path = ROOT) -> str:
    """Check every process's settings, write ``run_dir``'s nginx config and Procfile; return
    what to print to the user. Bad settings: SystemExit with one line each, nothing written."""
    nginx_port = _port(env, "SLUICE_NGINX_PORT", NGINX_PORT)
    ports = {s.name: _port(env, s.env_prefix + "_PORT", s.port) for s in SERVICES.values()}
    upstreams = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    redis_url, redis_argv = local_redis(run_dir, env)
    generated = dev_key(run_dir, env)
    extras = service_envs(run_dir, env, upstreams, redis_url, generated)
    bad, longest_graceful = devcheck.check(
        {name: (SERVICES[name].settings, {**env, **extra}) for name, extra in extras.items()}
    )
    if bad:
        raise SystemExit(
            "make run: bad settings, nothing started:\n" + "".join(f"  {b}\n" for b in bad)
        )
    stop_wait = longest_graceful + 5  # honcho's wait before SIGKILL: past every drain
    (run_dir / "stop-timeout").write_text(f"{stop_wait:g}\n")
    conf = write_nginx(run_dir / "nginx", f"127.0.0.1:{nginx_port}", upstreams)
    # nginx stops on SIGQUIT gracefully: streams end as their services drain them.
    lines = [f"nginx: {supervised('nginx', nginx_command(conf), longest_graceful + 2, 'QUIT')}"]
    if redis_argv:
        lines.append(f"redis: {supervised('redis', redis_argv, longest_graceful + 2)}")
    for service in SERVICES.values():
        command, _ = service_command(service, upstreams[service.name])
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in extras[service.name].items())
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
        lines.append(f"prometheus: {supervised('prometheus', prometheus, 10)}")
    if redis_url:
        worker_env = {"SLUICE_SERVICE_NAME": "progress", "SLUICE_REDIS_URL": redis_url}
        if generated is not None:
            worker_env["SLUICE_API_KEYS_FILE"] = str(generated[0])
        worker = [
            "env",
            *(f"{k}={v}" for k, v in worker_env.items()),
            sys.executable,
            "-m",
            "progress.worker",
        ]
        kill_after = longest_graceful + 2
        lines.append(f"progress-worker: {supervised('progress-worker', worker, kill_after)}")
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
        source = [n for n in ("SLUICE_API_KEYS", "SLUICE_API_KEYS_FILE") if env.get(n)]
        key_note = f"API keys: from {' and '.join(source)} in your environment\n"
    return (
        f"Sluice is starting. Front door: {base}\n"
        f"  curl -N {base}/toy-stream\n"
        f"  curl -N {base}/dummy-counter\n"
        f"  curl -N {base}/dummy-events\n"
        f'  curl -N "{base}/chat-stream?prompt=Tell+a+story"\n'
        f"  curl -N {base}/progress\n"
        f"  curl -N {base}/logs\n"
        f"{key_note}"
        f"{env_note(app_root)}"
        f"{mode}"
        f"{prometheus_note}"
        f"Services behind nginx:\n{services}\n"
        f"Ctrl-C stops everything: open streams are drained first (up to {stop_wait:g} s).\n"
    )


def honcho_args(run_dir: Path, app_root: Path = ROOT) -> list[str]:
    """honcho's command line: the Procfile, and no env file (``-e`` /dev/null, not ``.env``)."""
    return ["start", "-f", str(run_dir / "Procfile"), "-d", str(app_root), "-e", os.devnull]


def start(run_dir: Path, app_root: Path = ROOT) -> int:
    """Run the prepared Procfile under honcho, which waits for the drains before SIGKILL."""
    from honcho import command, manager

    # honcho kills what is left 5 s (a constant) after Ctrl-C: the drain window is longer.
    manager.KILL_WAIT = float((run_dir / "stop-timeout").read_text())
    try:
        command.main(honcho_args(run_dir, app_root))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sluice.devstack")
    parser.add_argument(
        "command",
        choices=["prepare", "start", "run"],
        help="prepare: check settings, write .run/; start: run it under honcho; run: both",
    )
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    parser.add_argument("--app-root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    if args.command in ("prepare", "run"):
        print(prepare(args.run_dir, os.environ, args.app_root), end="", flush=True)
    if args.command in ("start", "run"):
        return start(args.run_dir, args.app_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
