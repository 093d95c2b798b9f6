"""Runners, the reaper and the API under Redis faults: a real redis-server of this module's
own (free port, stopped by pid), paused with SIGSTOP, resumed with SIGCONT, killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from sluice_services.progress.app import create_app
from sluice_services.progress.model import Job
from sluice_services.progress.redis_store import RedisStore
from sluice_services.progress.runner import Timing, execute, reap
from sluice_services.progress.settings import ProgressSettings
from tests.support import asgi
from tests.support.metrics import wait_for
from tests.support.procs import Proc, running, start, start_redis

pytestmark = pytest.mark.anyio

LEASE, GRACE = 0.6, 0.6
TIMING = Timing(LEASE, GRACE)  # renew every 0.2 s, hold 0.8 s, give up after 1.4 s
KEY = "sk-test-progress-faults-0000000000"


@pytest.fixture(scope="module")
def own_redis(log_dir: Path) -> Iterator[Proc]:
    """Not the session's Redis: this one is paused and killed."""
    proc = start_redis(log_dir)
    with running(proc):
        yield proc
        os.kill(proc.pid, signal.SIGCONT)  # never leave it stopped


@asynccontextmanager
async def paused(proc: Proc, seconds: float) -> AsyncIterator[None]:
    """Redis stopped for ``seconds`` (or as long as the body takes, if longer)."""
    resume_at = time.monotonic() + seconds
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
        await asyncio.sleep(max(0.0, resume_at - time.monotonic()))
    finally:
        os.kill(proc.pid, signal.SIGCONT)


@asynccontextmanager
async def store_on(proc: Proc) -> AsyncIterator[RedisStore]:
    client = Redis.from_url(proc.extra["url"], socket_timeout=0.5, socket_connect_timeout=0.5)
    store = RedisStore(client, f"sluice:test-faults-{time.time_ns()}", 10_000, 60, grace=GRACE)
    try:
        yield store
    finally:
        await store.close()
        await client.aclose()


async def submit(store: RedisStore, kind: str, params: dict[str, Any]) -> Job:
    job = Job(kind=kind, params=params, owner="o")
    await store.create(job)
    return job


async def entries(store: RedisStore, job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The whole stored history, not stopping at a final event: what really was written."""
    raw = await store.redis.xrange(store.events_key(job_id))
    return [(i.decode(), f[b"type"].decode(), json.loads(f[b"data"])) for i, f in raw]


async def reaper(store: RedisStore, requeued: list[Job], stop: asyncio.Event) -> None:
    async def requeue(job: Job) -> None:
        requeued.append(job)

    while not stop.is_set():
        with contextlib.suppress(Exception):  # Redis away: as the service's, next pass
            await reap(store, TIMING, "test", requeue)
        await asyncio.sleep(0.1)


def assert_one_final_state_agreeing(job: Job, history: list[tuple[str, str, Any]]) -> None:
    finals = [t for _, t, _ in history if t in ("complete", "failed", "cancelled")]
    assert len(finals) == 1, history
    assert history[-1][1] == finals[0]
    assert {"complete": "succeeded"}.get(finals[0], finals[0]) == job.state
    assert job.seq == len(history)
    assert [i for i, _, _ in history] == [f"0-{n}" for n in range(1, len(history) + 1)]


async def test_a_runner_whose_lease_is_taken_stops_and_publishes_nothing_more(
    own_redis: Proc,
) -> None:
    """Regression: the runner never checked its lease; a reaped job ran on and finished."""
    async with store_on(own_redis) as store:
        job = await submit(store, "simulate", {"steps": 400, "delay": 0.01})
        run = asyncio.create_task(execute(store, job.id, 1, TIMING, "test"))
        await asyncio.sleep(0.3)
        await store.redis.zadd(store.running_key, {job.id: 0})  # expired, as if paused
        assert await store.reap(job, False, "taken over")
        taken = time.monotonic()
        await asyncio.wait_for(run, 2)  # it returns: the job is not its own any more
        stopped = time.monotonic() - taken
        count = len(await entries(store, job.id))
        await asyncio.sleep(0.3)
        history = await entries(store, job.id)
        stored = await store.get(job.id)
    assert stopped < 0.3  # at its next publish (10 ms) or heartbeat (0.2 s)
    assert len(history) == count
    assert stored is not None
    assert (stored.state, stored.error) == ("failed", "taken over")
    assert_one_final_state_agreeing(stored, history)


async def test_regression_a_cancel_during_the_final_write_left_a_finished_job_to_be_reaped(
    own_redis: Proc,
) -> None:
    # arq's abort cancels the job's task even while it writes its final event: the write was
    # cut, and the finished job was reaped a lease later as "failed: worker stopped".
    async with store_on(own_redis) as store:
        job = await submit(store, "simulate", {"steps": 2, "delay": 0})
        final_write = asyncio.Event()
        real_advance = store.advance

        async def slow_final(*args: Any, **kwargs: Any) -> Any:
            if args[-1] is True or kwargs.get("final"):  # the final event: slow, as under load
                final_write.set()
                await asyncio.sleep(0.3)
            return await real_advance(*args, **kwargs)

        store.advance = slow_final  # type: ignore[method-assign]
        run = asyncio.create_task(execute(store, job.id, 1, TIMING, "test"))
        await asyncio.wait_for(final_write.wait(), 5)
        run.cancel()  # as arq's abort does
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run, 5)
        stored = await store.get(job.id)
        history = await entries(store, job.id)
    assert stored is not None and stored.state == "succeeded", stored
    assert_one_final_state_agreeing(stored, history)


async def test_a_quiet_runner_is_stopped_by_its_heartbeat_when_the_lease_is_taken(
    own_redis: Proc,
) -> None:
    async with store_on(own_redis) as store:
        job = await submit(store, "simulate", {"steps": 2, "delay": 30})
        run = asyncio.create_task(execute(store, job.id, 1, TIMING, "test"))
        await asyncio.sleep(0.1)
        await store.redis.zadd(store.running_key, {job.id: 0})
        assert await store.reap(job, False, "taken over")
        taken = time.monotonic()
        await asyncio.wait([run], timeout=5)
        stopped = time.monotonic() - taken
        history = await entries(store, job.id)
    assert run.done()
    assert stopped < TIMING.interval + 0.3  # its next renewal, not the end of its 30 s sleep
    assert [t for _, t, _ in history] == ["log", "failed"]


async def test_a_redis_pause_shorter_than_lease_plus_grace_loses_no_job(own_redis: Proc) -> None:
    """(a): every job ends once, succeeded, its history agreeing with its state."""
    async with store_on(own_redis) as store:
        jobs = [await submit(store, "simulate", {"steps": 40, "delay": 0.03}) for _ in range(8)]
        runs = [asyncio.create_task(execute(store, j.id, 1, TIMING, "test")) for j in jobs]
        stop, requeued = asyncio.Event(), []
        reaping = asyncio.create_task(reaper(store, requeued, stop))
        await asyncio.sleep(0.3)
        async with paused(own_redis, LEASE + GRACE - 0.3):
            pass
        await asyncio.wait_for(asyncio.gather(*runs), 15)
        await asyncio.sleep(0.5)  # the reaper had its chances
        stop.set()
        await reaping
        for job in jobs:
            stored = await store.get(job.id)
            assert stored is not None
            assert stored.state == "succeeded", stored
            assert_one_final_state_agreeing(stored, await entries(store, job.id))
    assert requeued == []


async def test_a_redis_pause_longer_than_the_lease_fails_each_job_once_or_retries_it(
    own_redis: Proc,
) -> None:
    """(b): runners give up; the reaper fails a job once (or queues its retry); nothing of
    a stale runner follows; never succeeded after failed."""
    async with store_on(own_redis) as store:
        plain = [await submit(store, "simulate", {"steps": 500, "delay": 0.02}) for _ in range(4)]
        retried = [await submit(store, "checksum", {"size_mb": 2000}) for _ in range(2)]
        jobs = plain + retried
        runs = [asyncio.create_task(execute(store, j.id, 1, TIMING, "test")) for j in jobs]
        stop, requeued = asyncio.Event(), []
        reaping = asyncio.create_task(reaper(store, requeued, stop))
        await asyncio.sleep(0.4)
        paused_at = time.monotonic()
        async with paused(own_redis, TIMING.give_up + 1.0):
            # The runners give up while Redis is still stopped, by their own clocks.
            done, _ = await asyncio.wait(runs, timeout=TIMING.give_up + 0.8)
            assert len(done) == len(runs)
            assert time.monotonic() - paused_at < TIMING.give_up + 0.8
        await asyncio.sleep(1.0)  # the reaper's passes after the pause
        stop.set()
        await reaping
        for job in plain:
            stored = await store.get(job.id)
            history = await entries(store, job.id)
            assert stored is not None
            assert stored.state == "failed"
            assert "stopped responding" in (stored.error or "")
            assert_one_final_state_agreeing(stored, history)
        for job in retried:
            stored = await store.get(job.id)
            history = await entries(store, job.id)
            assert stored is not None
            assert (stored.state, stored.attempt) == ("queued", 2)
            assert history[-1][1] == "log"
            assert "retrying (attempt 2)" in history[-1][2]["message"]
            assert not [t for _, t, _ in history if t in ("complete", "failed", "cancelled")]
    assert sorted(j.id for j in requeued) == sorted(j.id for j in retried)


def faults_app(redis_url: str) -> Any:
    settings = ProgressSettings(
        api_keys=SecretStr(KEY),
        redis_url=redis_url,
        heartbeat_interval=0.2,
        progress_lease=LEASE,
        progress_lease_grace=GRACE,
        redis_timeout=0.5,
        rate_limit="1000/minute",
        rate_limit_timeout=0.3,
    )
    return create_app(settings)


AUTH = [("authorization", f"Bearer {KEY}"), ("content-type", "application/json")]


async def test_rate_limited_routes_answer_503_promptly_while_redis_is_stopped_and_streams_beat(
    own_redis: Proc,
) -> None:
    """(d): SLUICE_RATE_LIMIT_TIMEOUT holds for progress routes under SIGSTOP; a stream
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
            waiting = [
                m.decode()
                for k in keys
                for m in await client.zrange(k, 0, -1)  # type: ignore[union-attr]
            ]
        finally:
            await client.aclose()
    assert created.status == 202, created.body
    assert job["id"] in waiting  # the reaper's next pass queues it
