"""progress in Redis mode: 2 gunicorn workers, a real arq job worker, nginx, real Redis."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync

from tests.support.metrics import wait_for
from tests.support.paths import ROOT
from tests.support.procs import Proc, start, start_nginx, start_redis, start_service

KEY = "sk-e2e-progress-000000000000000001"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Stack:
    def __init__(self, log_dir: Path, redis_url: str) -> None:
        self.log_dir = log_dir
        self.env = {
            "SLUICE_API_KEYS": KEY,
            "SLUICE_REDIS_URL": redis_url,
            "SLUICE_PROGRESS_LEASE": "1",
            "SLUICE_PROGRESS_LEASE_GRACE": "0.5",
            "SLUICE_SERVICE_NAME": "progress",
            "SLUICE_PROGRESS_WORKER_METRICS_PORT": "0",
            "SLUICE_RATE_LIMIT": "10000/minute",
            "SLUICE_DEV_PROGRESS_SEED_DELAY": "0.01",
        }
        self.api = start_service("progress", log_dir, self.env, workers=2)
        self.worker = self.start_worker()
        self.nginx = start_nginx({"progress": f"127.0.0.1:{self.api.port}"}, log_dir)

    def start_worker(self) -> Proc:
        proc = start(
            f"progress-worker-{time.time_ns()}",
            [sys.executable, "-m", "sluice_services.progress.worker"],
            self.log_dir,
            self.env,
        )
        wait_for(lambda: "job worker started" in proc.log(), 20, what="job worker up")
        return proc

    def submit(self, **params: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{self.nginx.url}/jobs", headers=AUTH, json={"kind": "simulate", "params": params}
        )
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(scope="module")
def stack(log_dir: Path, redis_server: Proc) -> Iterator[Stack]:
    redis_sync.Redis.from_url(redis_server.extra["url"]).flushdb()
    built = Stack(log_dir, redis_server.extra["url"])
    try:
        yield built
    finally:
        for proc in (built.nginx, built.worker, built.api):
            proc.stop()


def read_events(
    url: str, last: str | None = None, stop_after: int | None = None, request_id: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """SSE events from ``url``; (events, reached the end). Survives a dropped connection."""
    headers = {
        **AUTH,
        **({"Last-Event-ID": last} if last else {}),
        **({"X-Request-ID": request_id} if request_id else {}),
    }
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=15) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if not line:
                    if "data" in current:
                        events.append(current)
                        if current["event"] in ("complete", "failed", "cancelled"):
                            return events, True
                        if stop_after is not None and len(events) >= stop_after:
                            return events, False
                    current = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    current[name] = json.loads(value) if name == "data" else value
    except httpx.HTTPError:
        pass  # the connection dropped: the caller resumes
    return events, False


def test_job_streams_through_nginx_with_stream_ids(stack: Stack) -> None:
    job = stack.submit(steps=10, delay=0.02)
    events, done = read_events(stack.nginx.url + job["events_url"])
    assert done
    assert [e["event"] for e in events] == ["log"] + ["progress"] * 10 + ["complete"]
    assert [e["id"] for e in events] == [str(n) for n in range(1, 13)]  # event numbers
    state = httpx.get(stack.nginx.url + job["status_url"], headers=AUTH).json()
    assert state["state"] == "succeeded"


def test_resume_across_workers_with_random_cuts(stack: Stack) -> None:
    rng = random.Random(7)
    for _ in range(3):
        job = stack.submit(steps=30, delay=0.01)
        url = stack.nginx.url + job["events_url"]
        seen: list[str] = []
        last = None
        for _ in range(20):
            events, done = read_events(url, last, stop_after=rng.randint(1, 8))
            seen += [e["id"] for e in events]
            last = seen[-1] if seen else last
            if done:
                break
        everything, _ = read_events(url)
        assert seen == [e["id"] for e in everything]
        assert len(everything) == 32


def test_sigkill_of_the_serving_worker_loses_nothing(stack: Stack) -> None:
    job = stack.submit(steps=60, delay=0.05)
    url = stack.nginx.url + job["events_url"]
    rid = f"kill-me-{time.time_ns()}"
    before, _ = read_events(url, stop_after=5, request_id=rid)
    # That connection is gone already; open another, find its worker, kill it mid-stream.
    rid = f"kill-me-{time.time_ns()}"
    import threading

    got: list[dict[str, Any]] = []

    def follow() -> None:
        events, _ = read_events(url, before[-1]["id"], request_id=rid)
        got.extend(events)

    thread = threading.Thread(target=follow)
    thread.start()

    def serving_pid() -> int | None:
        for line in stack.api.log().splitlines():
            if rid in line and '"stream started"' in line:
                return int(json.loads(line)["pid"])
        return None

    wait_for(lambda: serving_pid() is not None, 5, what="the serving worker is known")
    time.sleep(0.3)
    pid = serving_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    thread.join(15)
    assert got, "nothing arrived before the kill"
    after, done = read_events(url, got[-1]["id"])  # the client reconnects: another worker
    assert done
    everything, _ = read_events(url)
    assert [e["id"] for e in before + got + after] == [e["id"] for e in everything]


def test_cancel_in_redis_mode_within_a_second(stack: Stack) -> None:
    job = stack.submit(steps=1000, delay=0.05)
    url = stack.nginx.url + job["events_url"]
    read_events(url, stop_after=3)
    asked = time.monotonic()
    assert httpx.delete(stack.nginx.url + job["status_url"], headers=AUTH).status_code == 202
    events, done = read_events(url)
    assert done
    assert events[-1]["event"] == "cancelled"
    wait_for(
        lambda: (
            httpx.get(stack.nginx.url + job["status_url"], headers=AUTH).json()["state"]
            == "cancelled"
        ),
        1.0 - (time.monotonic() - asked) + 0.2,
    )


def test_seed_progress_through_nginx_with_curl(stack: Stack) -> None:
    out = subprocess.run(
        ["curl", "-sN", f"{stack.nginx.url}/progress"], capture_output=True, check=True, timeout=30
    ).stdout.decode()
    frames = [f for f in out.split("\n\n") if f and not f.startswith(":")]
    assert frames[0] == 'data: {"progress": 1.0, "step": 1}'
    assert frames[-1] == "event: complete\ndata: Done!"
    assert len(frames) == 101


def test_job_worker_killed_mid_job_fails_the_job_in_time(stack: Stack) -> None:
    job = stack.submit(steps=200, delay=0.05)
    url = stack.nginx.url + job["events_url"]
    read_events(url, stop_after=3)
    stack.worker.stop(signal.SIGKILL)
    killed = time.monotonic()
    try:
        events, done = read_events(url)
        took = time.monotonic() - killed
        assert done
        assert events[-1]["event"] == "failed"
        assert "stopped responding" in events[-1]["data"]["error"]
        assert took < 4.0  # lease 1 s + a renewal interval 0.33 s + grace 0.5 s + a pass
    finally:
        stack.worker = stack.start_worker()
    state = httpx.get(stack.nginx.url + job["status_url"], headers=AUTH).json()
    assert state["state"] == "failed"


def test_a_kind_that_allows_retries_runs_again_after_its_worker_dies(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.nginx.url}/jobs",
        headers=AUTH,
        json={"kind": "checksum", "params": {"size_mb": 3000}},
    )
    job = response.json()
    url = stack.nginx.url + job["events_url"]
    first, _ = read_events(url, stop_after=3)  # it is hashing
    stack.worker.stop(signal.SIGKILL)
    stack.worker = stack.start_worker()
    rest, done = read_events(url, first[-1]["id"])
    assert done
    assert rest[-1]["event"] == "complete"
    assert rest[-1]["data"]["result"]["bytes"] == 3000 * 1024 * 1024
    retried = [
        e for e in rest if e["event"] == "log" and "retrying (attempt 2)" in e["data"]["message"]
    ]
    assert len(retried) == 1
    assert httpx.get(stack.nginx.url + job["status_url"], headers=AUTH).json()["attempt"] == 2


def readme_progress_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## progress\n") :]
    return section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh"))]


def test_the_readme_progress_examples_run_as_written_in_redis_mode(
    stack: Stack, tmp_path: Path
) -> None:
    """Regression: ``?after=5`` was a 400 in Redis mode (ids were stream entry ids)."""
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "dev-api-key").write_text(KEY + "\n")
    script = readme_progress_block().replace("http://127.0.0.1:8080", stack.nginx.url)
    script = script.replace('"steps": 20, "delay": 0.5', '"steps": 20, "delay": 0.05')
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert '{"error":' not in out.replace(" ", ""), out  # no JSON error answer
    lines = [json.loads(x) for x in out.splitlines() if x.startswith('{"id":"')]
    assert [x["id"] for x in lines] == [str(n) for n in range(6, 23)]  # after event 5
    assert lines[-1]["event"] == "complete"
    assert out.count("event: complete") == 2  # the job's SSE stream and the seed's demo
    assert '"state":"succeeded"' in out.replace(" ", "")


@pytest.fixture(scope="module")
def paused_stack(log_dir: Path) -> Iterator[tuple[Stack, Proc]]:
    """A stack on a Redis of its own: this one is stopped and resumed."""
    redis = start_redis(log_dir)
    built = Stack(log_dir, redis.extra["url"])
    try:
        yield built, redis
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        for proc in (built.nginx, built.worker, built.api, redis):
            proc.stop()


def final_events(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events if e["event"] in ("complete", "failed", "cancelled")]


def test_redis_sigstop_under_running_jobs_with_the_real_worker(
    paused_stack: tuple[Stack, Proc],
) -> None:
    """Shorter than lease + grace (1.5 s): no job lost. Longer than the worker's give-up
    (1.83 s): each job failed once, nothing from its stale runner after, never both."""
    stack, redis = paused_stack
    short = [stack.submit(steps=40, delay=0.05) for _ in range(4)]
    time.sleep(0.5)
    os.kill(redis.pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(redis.pid, signal.SIGCONT)
    for job in short:
        events, done = read_events(stack.nginx.url + job["events_url"])
        state = httpx.get(stack.nginx.url + job["status_url"], headers=AUTH).json()
        assert done
        assert final_events(events) == ["complete"]
        assert state["state"] == "succeeded"
        assert state["last_event_id"] == events[-1]["id"]

    long = [stack.submit(steps=400, delay=0.05) for _ in range(4)]
    time.sleep(0.5)
    os.kill(redis.pid, signal.SIGSTOP)
    time.sleep(3.0)
    os.kill(redis.pid, signal.SIGCONT)
    for job in long:
        events, done = read_events(stack.nginx.url + job["events_url"])
        state = httpx.get(stack.nginx.url + job["status_url"], headers=AUTH).json()
        assert done
        assert final_events(events) == ["failed"]
        assert "stopped responding" in events[-1]["data"]["error"]
        assert state["state"] == "failed"
        assert state["last_event_id"] == events[-1]["id"]
        time.sleep(0.3)  # a stale runner would have written by now
        again = httpx.get(stack.nginx.url + job["status_url"], headers=AUTH).json()
        assert again["last_event_id"] == state["last_event_id"]
    lost = [line for line in stack.worker.log().splitlines() if "lost its lease" in line]
    assert len(lost) >= len(long)
