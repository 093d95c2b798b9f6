"""A rolling restart (gunicorn's SIGHUP) under steady traffic, with and without the hand-over.

    .venv/bin/python -m benchmarks.rolling_restart [--workers 1] [--clients 8] [--restarts 3]

demo behind nginx (the shipped config), ``--clients`` clients requesting /dummy-counter
back to back and a few endless /dummy-events listeners, then ``--restarts`` SIGHUPs, each
once the previous one is over. Run twice in one go: with the hand-over (the default) and
with ``SLUICE_HANDOFF_TIMEOUT=0`` (the old worker drains at once: it refuses new streams,
then exits before its replacement serves). Prints, per mode: requests, refused (503),
failed (502, connection errors), the latency p50/p99/max of requests that started during a
restart, and the longest stretch in which no request was served (a 200).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tests.support.procs import running, start_nginx, start_service, worker_pids

from benchmarks.support import percentile, table

ENV = {
    "SLUICE_DEV_DEMO_COUNTER_DELAY": "0",
    "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.1",
    "SLUICE_DRAIN_WINDOW": "2",
    "SLUICE_RATE_LIMIT": "1000000/minute",
    "SLUICE_MAX_STREAMS_PER_KEY": "100000",
}


@dataclass
class Tally:
    ok: int = 0
    refused: int = 0
    failed: int = 0
    during: list[float] = field(default_factory=list)  # latencies of requests in a restart
    served: list[float] = field(default_factory=list)  # when each 200 came back
    hints: int = 0


async def client(url: str, tally: Tally, restarting: list[bool], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for _ in range(200_000):  # bounded; stopped by the driver
            if stop.is_set():
                return
            in_restart = restarting[0]
            started = time.perf_counter()
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status == 200 and body.count(b"Count:") == 10:
                        tally.ok += 1
                        tally.served.append(time.perf_counter())
                    elif response.status == 503:
                        tally.refused += 1
                        await asyncio.sleep(0.05)
                    else:
                        tally.failed += 1
            except aiohttp.ClientError:
                tally.failed += 1
            if in_restart or restarting[0]:
                tally.during.append(time.perf_counter() - started)


async def listener(url: str, tally: Tally, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        for _ in range(1000):
            if stop.is_set():
                return
            try:
                async with session.get(url) as response:
                    async for line in response.content:
                        if line.startswith(b"event: reconnect"):
                            tally.hints += 1
                        if stop.is_set():
                            return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)


async def drive(args: argparse.Namespace, handoff: bool, logs: Path) -> list[str]:
    env = {**ENV, "SLUICE_LOG_LEVEL": "WARNING"}
    if not handoff:
        env["SLUICE_HANDOFF_TIMEOUT"] = "0"
    demo = start_service("demo", logs, env, workers=args.workers)
    nginx = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, logs)
    tally = Tally()
    restarting = [False]
    stop = asyncio.Event()
    with running(nginx, demo):
        tasks = [
            asyncio.create_task(client(f"{nginx.url}/dummy-counter", tally, restarting, stop))
            for _ in range(args.clients)
        ]
        tasks += [
            asyncio.create_task(listener(f"{nginx.url}/dummy-events", tally, stop))
            for _ in range(3)
        ]
        await asyncio.sleep(1.0)
        restart_seconds = []
        for _ in range(args.restarts):
            old = set(worker_pids(demo))
            restarting[0] = True
            began = time.perf_counter()
            demo.popen.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while old & set(worker_pids(demo)) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            restart_seconds.append(time.perf_counter() - began)
            restarting[0] = False
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait(tasks, timeout=10)
    stalls = [b - a for a, b in zip(tally.served, tally.served[1:], strict=False)]
    total = tally.ok + tally.refused + tally.failed
    return [
        "hand-over" if handoff else "no hand-over (SLUICE_HANDOFF_TIMEOUT=0)",
        str(total),
        str(tally.refused),
        str(tally.failed),
        f"{percentile(tally.during, 0.5) * 1000:.1f}",
        f"{percentile(tally.during, 0.99) * 1000:.1f}",
        f"{max(tally.during, default=0) * 1000:.0f}",
        f"{max(stalls, default=0) * 1000:.0f}",
        f"{max(restart_seconds):.1f}",
        str(tally.hints),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [asyncio.run(drive(args, handoff, Path(tmp))) for handoff in (True, False)]
    print(
        f"demo behind nginx, {args.workers} worker(s), {args.clients} clients back to back on "
        f"/dummy-counter, 3 SSE listeners, {args.restarts} SIGHUPs"
    )
    print(
        table(
            [
                "mode",
                "requests",
                "refused 503",
                "failed",
                "p50 ms (in restart)",
                "p99 ms",
                "max ms",
                "longest gap w/o 200 ms",
                "restart s",
                "reconnect hints",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
