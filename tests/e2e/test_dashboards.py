"""Every dashboard panel's query, run against a real Prometheus that scraped the real stack.

No Grafana server exists here, so the dashboards are proven the other way round: a scripted
scenario drives every service (streams, disconnects, limits, auth failures, a drain, chat
tokens and upstream errors, jobs that succeed and fail, log lines, gaps and rotations), a
real Prometheus scrapes it, and each panel query, its variables substituted, must be valid
and return data.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.metrics import wait_for
from tests.support.paths import ROOT
from tests.support.procs import (
    Proc,
    free_port,
    running,
    start,
    start_nginx,
    start_prometheus,
    start_service,
    worker_pids,
)

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
KEY = "sk-e2e-dashboards-00000000000000001"
AUTH = {"Authorization": f"Bearer {KEY}"}
VARIABLES = {
    "$__rate_interval": "30s",
    "$__range": "10m",
    "$service": ".*",
    "$model": ".*",
    "$upstream": ".*",
}


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def test_dashboards_are_well_formed() -> None:
    provisioned = (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "uid: sluice-prometheus" in provisioned
    assert {p.stem for p in DASHBOARDS} == {"overview", "chat-proxy", "progress", "log-tail"}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        board = load(path)
        ids = [panel["id"] for panel in board["panels"]]
        assert len(set(ids)) == len(ids), path.name
        for panel in board["panels"]:
            if panel["type"] == "row":  # a section header, expanded: its panels follow it
                assert not panel.get("targets") and not panel.get("panels"), path.name
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "sluice-prometheus"}
            assert panel["fieldConfig"]["defaults"]["unit"], (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "sluice-prometheus"


def scenario(nginx: Proc, demo: Proc, log: Path, log_tail: Proc) -> None:
    base = nginx.url
    for _ in range(3):
        httpx.get(f"{base}/dummy-counter", timeout=10)
    for _ in range(3):
        with httpx.stream("GET", f"{base}/dummy-events", timeout=10) as response:
            chunks = response.iter_raw()
            next(chunks)
    for _ in range(8):  # over the demo's 5/minute limit
        httpx.get(f"{base}/toy-stream?x=1", timeout=10)
    httpx.get(f"{base}/toy-stream", headers={"Authorization": "Bearer nope"})
    for model in ("mock-gpt", "mock-gpt", "mock-fault:error_after=2", "mock-fault:status=503"):
        httpx.post(
            f"{base}/v1/chat/completions",
            headers=AUTH,
            timeout=20,
            json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
    jobs = []
    for params in ({"steps": 3, "delay": 0.05}, {"steps": 3, "delay": 0.05, "fail_at": 2}):
        response = httpx.post(
            f"{base}/jobs", headers=AUTH, json={"kind": "simulate", "params": params}
        )
        jobs.append(response.json())
    for job in jobs:
        httpx.get(f"{base}{job['events_url']}", headers=AUTH, timeout=20)
    with httpx.stream("GET", f"{base}/logs/app?lines=0", headers=AUTH, timeout=10) as tail:
        lines = tail.iter_lines()
        with log.open("a") as handle:
            handle.write("one\ntwo\n")
        next(lines)
    httpx.get(f"{base}/logs/app?after=1:0&follow=false", headers=AUTH)  # a gap: no such inode
    log.rename(log.with_suffix(".1"))
    log.write_text("after rotation\n")
    wait_for(
        lambda: (
            "rotated" in httpx.get(f"{log_tail.url}/metrics").text
            or "rename" in httpx.get(f"{log_tail.url}/metrics").text
        ),
        5,
    )
    # A drain: SIGTERM one demo worker while a stream is open on... whichever it is.
    with httpx.stream("GET", f"{base}/dummy-events", timeout=10) as response:
        chunks = response.iter_raw()
        next(chunks)
        for pid in worker_pids(demo):
            os.kill(pid, signal.SIGTERM)
        for _ in chunks:
            pass
    wait_for(
        lambda: 'result="clean"' in httpx.get(f"{demo.url}/metrics").text,
        15,
        what="a drain counted",
    )
    # Keep streams active while Prometheus scrapes, so gauges have data.
    with httpx.stream("GET", f"{base}/dummy-events", timeout=10) as response:
        chunks = response.iter_raw()
        next(chunks)
        time.sleep(2.5)


def test_every_panel_query_returns_data(log_dir: Path, redis_server: Proc, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("boot\n")
    common = {
        "SLUICE_API_KEYS": KEY,
        "SLUICE_DRAIN_WINDOW": "1",
        "SLUICE_DEV_DEMO_COUNTER_DELAY": "0.01",
        "SLUICE_DEV_DEMO_TOY_DELAY": "0.01",
        "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.05",
    }
    worker_port = free_port()
    mock = start_service(
        "mock-upstream", log_dir, {"SLUICE_DEV_MOCK_TOKEN_DELAY": "0.005"}, workers=1
    )
    demo = start_service("demo", log_dir, {**common, "SLUICE_RATE_LIMIT": "5/minute"}, workers=2)
    # A fleet whose first deployment is down: every stream fails over once, then it cools
    # down (the Fleet row's failovers, cooldowns, endpoints and upstream TTFT have data).
    fleet = tmp_path / "upstreams.yaml"
    fleet.write_text(
        "upstreams:\n"
        f"  - {{name: down, base_url: 'http://127.0.0.1:{free_port()}/v1'}}\n"
        f"  - {{name: mock, base_url: '{mock.url}/v1', priority: 1}}\n"
        "routing: {failures: 1, cooldown: 120, attempts: 2}\n"
    )
    chat = start_service(
        "chat-proxy", log_dir, {**common, "SLUICE_UPSTREAMS_FILE": str(fleet)}, workers=1
    )
    progress_env = {
        **common,
        "SLUICE_REDIS_URL": redis_server.extra["url"],
        "SLUICE_SERVICE_NAME": "progress",
        "SLUICE_PROGRESS_WORKER_METRICS_PORT": str(worker_port),
    }
    progress = start_service("progress", log_dir, progress_env, workers=1)
    worker = start(
        "dash-worker",
        [sys.executable, "-m", "sluice_services.progress.worker"],
        log_dir,
        progress_env,
    )
    log_tail = start_service(
        "log-tail",
        log_dir,
        {**common, "SLUICE_LOG_TAIL_FILES": f"app={log}", "SLUICE_LOG_TAIL_POLL_INTERVAL": "0.1"},
        workers=1,
    )
    nginx = start_nginx(
        {
            "demo": f"127.0.0.1:{demo.port}",
            "chat-proxy": f"127.0.0.1:{chat.port}",
            "progress": f"127.0.0.1:{progress.port}",
            "log-tail": f"127.0.0.1:{log_tail.port}",
        },
        log_dir,
    )
    targets = {
        "demo": f"127.0.0.1:{demo.port}",
        "chat-proxy": f"127.0.0.1:{chat.port}",
        "progress": f"127.0.0.1:{progress.port}",
        "log-tail": f"127.0.0.1:{log_tail.port}",
        "mock-upstream": f"127.0.0.1:{mock.port}",
        "progress-worker": f"127.0.0.1:{worker_port}",
    }
    prometheus = start_prometheus(targets, log_dir)
    with running(prometheus, nginx, log_tail, worker, progress, chat, demo, mock):
        wait_for(lambda: "job worker started" in worker.log(), 20)
        scenario(nginx, demo, log, log_tail)
        time.sleep(3)  # the last scrapes
        failures = []
        checked = 0
        bogus = httpx.get(
            f"{prometheus.url}/api/v1/query", params={"query": "sluice_no_such_metric_total"}
        ).json()
        for path in DASHBOARDS:
            for panel in load(path)["panels"]:
                for target in panel.get("targets", []):  # (a row has none)
                    expr = target["expr"]
                    for name, value in VARIABLES.items():
                        expr = expr.replace(name, value)
                    answer = httpx.get(
                        f"{prometheus.url}/api/v1/query", params={"query": expr}
                    ).json()
                    checked += 1
                    if answer["status"] != "success":
                        failures.append(f"{path.stem} / {panel['title']}: {answer.get('error')}")
                    elif not answer["data"]["result"]:
                        failures.append(f"{path.stem} / {panel['title']}: no data for {expr}")
        rules = httpx.get(f"{prometheus.url}/api/v1/rules").json()["data"]["groups"]
        unhealthy = [r["name"] for g in rules for r in g["rules"] if r.get("health") == "err"]
    assert bogus["data"]["result"] == []  # an absent metric really is "no data"
    assert checked >= 35
    assert failures == []
    assert unhealthy == []
