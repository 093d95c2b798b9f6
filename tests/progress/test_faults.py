"""The API under Redis faults: a real redis-server of this module's own (free port, stopped
by pid), paused with SIGSTOP, resumed with SIGCONT, killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from sluice_services.progress.app import create_app
from sluice_services.progress.settings import ProgressSettings
from tests.progress.conftest import GRACE, LEASE
from tests.support import asgi
from tests.support.metrics import wait_for
from tests.support.procs import Proc, start, start_redis

pytestmark = pytest.mark.anyio

KEY = "sk-test-progress-faults-0000000000"


def faults_app(redis_url: str) -> Any:
    settings = ProgressSettings(
        api_keys=SecretStr(KEY),
        redis_url=redis_url,
        heartbeat_interval=0.2,
        progress_lease=LEASE,
        progress_lease_grace=GRACE,
        redis_timeout=0.5,
        rate_limit="1000/minute",
    )
    return create_app(settings)


AUTH = [("authorization", f"Bearer {KEY}"), ("content-type", "application/json")]


async def test_rate_limited_routes_answer_503_promptly_while_redis_is_stopped_and_streams_beat(
    own_redis: Proc,
) -> None:
    """(d): the rate-limit check's Redis bound holds for progress routes under SIGSTOP; a stream
    already open keeps sending heartbeats meanwhile."""
    async with asgi.lifespan(faults_app(own_redis.extra["url"])) as app:
        body = json.dumps({"kind": "simulate", "params": {"steps": 3, "delay": 20}}).encode()
        created = await asgi.request(app, "/jobs", method="POST", headers=AUTH, body=body)
        job = json.loads(created.body)
        watching = asyncio.create_task(
            asgi.request(app, job["events_url"], headers=AUTH, timeout=20, leave_after=12)
        )
        await asyncio.sleep(0.5)
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            answers = []
            for method, path in (
                ("GET", job["status_url"]),
                ("GET", "/jobs"),
                ("POST", "/jobs"),
                ("GET", job["events_url"]),
                ("DELETE", job["status_url"]),
            ):
                asked = time.monotonic()
                result = await asgi.request(app, path, method=method, headers=AUTH, body=body)
                answers.append((result, time.monotonic() - asked))
            await asyncio.sleep(1.0)
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        stream = await asyncio.wait_for(watching, 20)
    for result, took in answers:
        assert result.status == 503, result.body
        assert json.loads(result.body)["error"]["type"] == "unavailable"
        assert took < 2.0  # the limiter's 0.3 s (its client blocks the loop), and no hang
    pings = [c for c in stream.chunks if c.startswith(b": ping")]
    assert len(pings) >= 3  # 0.2 s apart while Redis was stopped (and its loop blocked)


async def test_redis_killed_mid_job_then_restarted_api_503s_then_state_is_consistent(
    log_dir: Path,
) -> None:
    """(c): SIGKILL, then a restart on the same port (with its data: appendonly)."""
    folder = log_dir / f"redis-aof-{time.time_ns()}"
    folder.mkdir()
    args = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(folder)]
    proc = start_redis(log_dir, args=args)
    port = proc.port
    env = {
        "SLUICE_REDIS_URL": proc.extra["url"],
        "SLUICE_PROGRESS_LEASE": str(LEASE),
        "SLUICE_PROGRESS_LEASE_GRACE": str(GRACE),
        "SLUICE_REDIS_TIMEOUT": "0.5",
        "SLUICE_PROGRESS_WORKER_METRICS_PORT": "0",
    }
    worker = start(
        f"progress-worker-{port}",
        [sys.executable, "-m", "sluice_services.progress.worker"],
        log_dir,
        env,
    )
    wait_for(lambda: "job worker started" in worker.log(), 20, what="job worker up")
    try:
        async with asgi.lifespan(faults_app(proc.extra["url"])) as app:
            body = json.dumps({"kind": "simulate", "params": {"steps": 30, "delay": 0.1}}).encode()
            job = json.loads(
                (await asgi.request(app, "/jobs", method="POST", headers=AUTH, body=body)).body
            )
            await asyncio.sleep(0.5)
            proc.stop(signal.SIGKILL)
            answers = []
            for method, path in (("GET", job["status_url"]), ("POST", "/jobs")):
                asked = time.monotonic()
                result = await asgi.request(app, path, method=method, headers=AUTH, body=body)
                answers.append((result, time.monotonic() - asked))
            proc = start_redis(log_dir, args=args, port=port)
            deadline = time.monotonic() + 20
            while True:
                state = json.loads((await asgi.request(app, job["status_url"], headers=AUTH)).body)
                if state.get("state") in ("succeeded", "failed") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            stream = await asgi.request(app, job["events_url"], headers=AUTH, timeout=10)
        assert worker.popen.poll() is None, "the job worker did not survive Redis's restart"
    finally:
        worker.stop()
        proc.stop()
    for result, took in answers:
        assert result.status == 503, result.body
        assert json.loads(result.body)["error"]["type"] == "unavailable"
        assert took < 2.0
    frames = [f for f in stream.text.split("\n\n") if f.startswith("event:")]
    finals = [f for f in frames if f.split("\n")[0] in ("event: complete", "event: failed")]
    assert len(finals) == 1
    assert frames[-1] == finals[0]
    expected = {"succeeded": "event: complete", "failed": "event: failed"}[state["state"]]
    assert finals[0].startswith(expected)
    assert state["last_event_id"] == finals[0].split("id: ")[1].split("\n")[0]


async def test_regression_a_job_whose_queueing_failed_was_a_503_yet_ran(
    own_redis: Proc, monkeypatch: pytest.MonkeyPatch
) -> None:
    # POST /jobs created the job (in the requeue set, so the reaper queues it), then answered
    # 503 when queueing failed: the client, with no id, retried into a duplicate job.
    from arq.connections import ArqRedis
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def fails(*args: Any, **kwargs: Any) -> Any:
        raise RedisTimeoutError("queueing the job timed out")

    async with asgi.lifespan(faults_app(own_redis.extra["url"])) as app:
        monkeypatch.setattr(ArqRedis, "enqueue_job", fails)
        body = json.dumps({"kind": "simulate", "params": {"steps": 1, "delay": 0}}).encode()
        created = await asgi.request(app, "/jobs", method="POST", headers=AUTH, body=body)
        monkeypatch.undo()
        job = json.loads(created.body)
        client = Redis.from_url(own_redis.extra["url"])
        try:
            keys = [k async for k in client.scan_iter(match="*requeue*")]
            waiting = [m.decode() for k in keys for m in await client.zrange(k, 0, -1)]
        finally:
            await client.aclose()
    assert created.status == 202, created.body
    assert job["id"] in waiting  # the reaper's next pass queues it
