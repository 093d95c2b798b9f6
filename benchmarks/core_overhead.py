"""CPU the Sluice core costs per stream: auth + limits + caps + metrics vs a bare FastAPI stream.

    .venv/bin/python -m benchmarks.core_overhead [--streams 2000] [--concurrency 50]

Each variant runs under the same gunicorn config with one worker; the client (this process)
opens N ten-line text streams at the given concurrency; the figure is the server's CPU
(user + system of master and worker, from /proc) per 1,000 streams. Ratios come from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tests.support.procs import free_port, running, start, start_redis, wait_http

from benchmarks.support import cpu_seconds, table
from sluice.registry import registry
from sluice.serve import GUNICORN_CONF

KEY = "sk-bench-0000000000000000000000"


async def drive(url: str, streams: int, concurrency: int, headers: dict[str, str]) -> int:
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(streams):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as client:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                queue.get_nowait()
                async with client.stream("GET", url) as response:
                    body = await response.aread()
                    if response.status_code != 200 or body.count(b"\n") != 10:
                        failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def run_variant(
    name: str,
    factory: str,
    env: dict[str, str],
    streams: int,
    concurrency: int,
    headers: dict[str, str],
    log_dir: Path,
) -> list[str]:
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    metrics_dir = log_dir / f"metrics-{port}"
    metrics_dir.mkdir()
    full_env = {
        "SLUICE_BIND": f"127.0.0.1:{port}",
        "SLUICE_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "SLUICE_LOG_LEVEL": "WARNING",
        **env,
    }
    proc = start(
        name.replace(" ", "-"),
        [gunicorn, "-c", str(GUNICORN_CONF), factory],
        log_dir,
        full_env,
    )
    with running(proc):
        url = f"http://127.0.0.1:{port}/dummy-counter"
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        asyncio.run(drive(url, 200, concurrency, headers))  # warm up
        cpu_before = cpu_seconds(proc.pid)
        started = time.perf_counter()
        failures = asyncio.run(drive(url, streams, concurrency, headers))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid) - cpu_before
    return [name, f"{cpu / streams * 1000:.2f}", f"{streams / wall:.0f}", str(failures)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    core = {
        "SLUICE_DEV_DEMO_COUNTER_DELAY": "0",
        "SLUICE_RATE_LIMIT": "1000000/minute",
        "SLUICE_MAX_STREAMS_PER_KEY": "1000",
        "SLUICE_SERVICE_NAME": "demo",
    }
    demo = registry()["demo"].gunicorn_app
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        redis = start_redis(log_dir)
        with running(redis):
            variants = [
                ("bare FastAPI", "benchmarks.bare_app:create_app()", {}, {}),
                ("core, public route", demo, core, {}),
                (
                    "core + API key",
                    demo,
                    {**core, "SLUICE_API_KEYS": KEY, "SLUICE_PUBLIC_ROUTES": ""},
                    {"Authorization": f"Bearer {KEY}"},
                ),
                (
                    "core + API key + Redis",
                    demo,
                    {
                        **core,
                        "SLUICE_API_KEYS": KEY,
                        "SLUICE_PUBLIC_ROUTES": "",
                        "SLUICE_REDIS_URL": redis.extra["url"],
                    },
                    {"Authorization": f"Bearer {KEY}"},
                ),
            ]
            rows = [
                run_variant(n, f, e, args.streams, args.concurrency, h, log_dir)
                for n, f, e, h in variants
            ]
    base = float(rows[0][1])
    for row in rows:
        row.insert(2, f"{float(row[1]) / base:.2f}x")
    print(f"{args.streams} streams of 10 lines, concurrency {args.concurrency}, one worker")
    print(table(["variant", "CPU s/1k streams", "vs bare", "streams/s", "failures"], rows))


if __name__ == "__main__":
    main()
