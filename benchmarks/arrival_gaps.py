"""Chunk arrival gaps: demo streams direct to gunicorn vs through nginx, in one run.

    .venv/bin/python -m benchmarks.arrival_gaps [--streams 20]

Starts the demo service (2 workers) and nginx on free ports, reads /dummy-counter (10 lines,
configured 0.1 s apart) concurrently N times each way, and prints the first-byte time and the
distribution of gaps between chunks. Equal gaps mean nothing in between buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from tests.support.procs import running, start_nginx, start_service

DELAY = 0.1


async def one_stream(client: httpx.AsyncClient, url: str) -> tuple[float, list[float]]:
    started = time.perf_counter()
    times = []
    async with client.stream("GET", url) as response:
        async for _ in response.aiter_raw():
            times.append(time.perf_counter() - started)
    return times[0], [b - a for a, b in itertools.pairwise(times)]


async def measure(url: str, streams: int) -> tuple[list[float], list[float]]:
    limits = httpx.Limits(max_connections=streams)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        results = await asyncio.gather(*(one_stream(client, url) for _ in range(streams)))
    firsts = [first for first, _ in results]
    gaps = [gap for _, stream_gaps in results for gap in stream_gaps]
    return firsts, gaps


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = start_service("demo", Path(tmp), {"SLUICE_DEV_DEMO_COUNTER_DELAY": str(DELAY)})
        nginx = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, Path(tmp))
        with running(nginx, demo):
            print(f"/dummy-counter, {args.streams} concurrent streams, configured gap {DELAY} s")
            heads = ("TTFB p50", "gap p50", "gap p1", "gap p99", "max")
            print(f"{'path':<8} " + " ".join(f"{h:>9}" for h in heads))
            for name, base in (("direct", demo.url), ("nginx", nginx.url)):
                firsts, gaps = asyncio.run(measure(f"{base}/dummy-counter", args.streams))
                print(
                    f"{name:<8} {statistics.median(firsts) * 1000:8.1f}ms"
                    f" {statistics.median(gaps) * 1000:8.1f}ms {pct(gaps, 0.01) * 1000:8.1f}ms"
                    f" {pct(gaps, 0.99) * 1000:8.1f}ms {max(gaps) * 1000:8.1f}ms"
                )


if __name__ == "__main__":
    main()
