"""Fan-out of job progress: memory and Redis modes side by side, in one run.

    .venv/bin/python -m benchmarks.progress

Scenarios: 1,000 concurrent subscribers on one job; 200 jobs with 5 subscribers each.
Prints events delivered per second, delivery latency p50/p99 (the event's publish time
to its arrival at the client, for events published after the subscriber connected), CPU
per 1,000 events delivered (API and job worker processes, from /proc), and Redis commands
per delivered event (INFO commandstats).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis as redis_sync
from tests.support.metrics import wait_for
from tests.support.procs import Proc, running, start, start_redis, start_service

from benchmarks.support import cpu_seconds, percentile, table

KEY = "sk-bench-progress-00000000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def subscribe(session: aiohttp.ClientSession, url: str, latencies: list[float]) -> int:
    count = 0
    async with session.get(url, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        connected = time.time()
        async for line in response.content:
            if line.startswith(b"data: "):
                data = json.loads(line[6:])
                if data.get("ts", 0) >= connected:  # live deliveries only, not the replay
                    latencies.append(time.time() - data["ts"])
                count += 1
    return count


async def scenario(
    base: str, jobs: int, per_job: int, steps: int, delay: float
) -> tuple[int, float, list[float]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        ids = []
        for _ in range(jobs):
            async with session.post(
                f"{base}/jobs",
                headers=AUTH,
                json={"kind": "simulate", "params": {"steps": steps, "delay": delay}},
            ) as response:
                ids.append((await response.json())["id"])
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(
                subscribe(session, f"{base}/jobs/{job_id}/events", latencies)
                for job_id in ids
                for _ in range(per_job)
            )
        )
        return sum(counts), time.perf_counter() - started, latencies


def run_mode(mode: str, logs: Path, redis: Proc) -> list[list[str]]:
    env = {
        "SLUICE_API_KEYS": KEY,
        "SLUICE_LOG_LEVEL": "WARNING",
        "SLUICE_RATE_LIMIT": "1000000/minute",
        "SLUICE_MAX_STREAMS_PER_KEY": "100000",
        "SLUICE_PROGRESS_WORKER_METRICS_PORT": "0",
        "SLUICE_SERVICE_NAME": "progress",
    }
    procs: list[Proc] = []
    if mode == "redis":
        env["SLUICE_REDIS_URL"] = redis.extra["url"]
    api = start_service("progress", logs, env, workers=1)
    procs.append(api)
    if mode == "redis":
        worker = start(
            f"bench-worker-{time.time_ns()}",
            [sys.executable, "-m", "sluice_services.progress.worker"],
            logs,
            {**env, "SLUICE_LOG_LEVEL": "INFO"},
        )
        wait_for(lambda: "job worker started" in worker.log(), 20)
        procs.append(worker)
    store = redis_sync.Redis.from_url(redis.extra["url"])
    rows = []
    with running(*procs):
        for name, jobs, per_job, steps, delay in (
            ("1 job x 1,000 subscribers", 1, 1000, 200, 0.02),
            ("200 jobs x 5 subscribers", 200, 5, 40, 0.1),
        ):
            store.config_resetstat()
            cpu_before = sum(cpu_seconds(p.pid) for p in procs)
            delivered, wall, latencies = asyncio.run(scenario(api.url, jobs, per_job, steps, delay))
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu_before
            stats = store.info("commandstats")
            commands = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_config")
            rows.append(
                [
                    mode,
                    name,
                    f"{delivered:,}",
                    f"{delivered / wall:,.0f}",
                    f"{percentile(latencies, 0.5) * 1000:.1f}",
                    f"{percentile(latencies, 0.99) * 1000:.1f}",
                    f"{cpu / delivered * 1000:.3f}",
                    f"{commands / delivered:.3f}" if mode == "redis" else "-",
                ]
            )
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        redis = start_redis(logs)
        with running(redis):
            rows = run_mode("memory", logs, redis) + run_mode("redis", logs, redis)
    print(
        table(
            [
                "mode",
                "scenario",
                "delivered",
                "events/s",
                "latency p50 ms",
                "latency p99 ms",
                "CPU s/1k events",
                "Redis cmds/event",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
