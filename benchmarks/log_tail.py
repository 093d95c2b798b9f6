"""500 followers of one file while a writer appends 2,000 lines/s for 20 s.

    .venv/bin/python -m benchmarks.log_tail [--followers 500] [--rate 2000] [--seconds 20]

Each line carries its write time; followers (aiohttp, text/plain) count lines and take
the latency of the last line of each chunk they receive. Prints delivery latency p50/p99
(write to client), lines delivered, CPU of the service per 1,000 lines delivered, lines
lost by followers that kept up (must be 0: each follower checks its sequence numbers),
gaps, and the service's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
from tests.support.procs import running, start_service

from benchmarks.support import cpu_seconds, percentile, rss_mb, table
from sluice.procfs import children

KEY = "sk-bench-logtail-000000000000000"


class Tally:
    def __init__(self) -> None:
        self.lines = self.lost = self.gaps = 0


async def follower(url: str, tally: Tally, latencies: list[float]) -> None:
    expected: int | None = None
    buffer = b""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {KEY}"}) as response,
    ):
        async for chunk in response.content.iter_any():
            complete, _, buffer = (buffer + chunk).rpartition(b"\n")
            if not complete:
                continue
            batch = complete.split(b"\n")
            for raw in batch:
                if raw.startswith(b"==>"):
                    tally.gaps += 1
                    expected = None
                    continue
                seq = int(raw.split(b" ", 2)[1])
                if expected is not None and seq != expected:
                    tally.lost += seq - expected
                expected = seq + 1
                tally.lines += 1
            latencies.append(time.time() - float(batch[-1].split(b" ", 1)[0]))


async def writer(path: Path, rate: int, seconds: float) -> int:
    written = 0
    started = time.perf_counter()
    with path.open("a") as handle:
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate)
            while written < due:
                handle.write(f"{time.time():.6f} {written} GET /api/items 200 0.003\n")
                written += 1
            handle.flush()
            await asyncio.sleep(0.005)
    return written


async def run(
    url: str, log: Path, followers: int, rate: int, seconds: float
) -> tuple[int, list[Tally], list[float]]:
    latencies: list[float] = []
    tallies = [Tally() for _ in range(followers)]
    tasks = [asyncio.create_task(follower(url, t, latencies)) for t in tallies]
    await asyncio.sleep(1.0)  # everyone connected
    written = await writer(log, rate, seconds)
    await asyncio.sleep(1.5)  # the last lines arrive
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return written, tallies, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--followers", type=int, default=500)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "app.log"
        log.write_text("")
        env = {
            "SLUICE_API_KEYS": KEY,
            "SLUICE_LOG_TAIL_FILES": f"app={log}",
            "SLUICE_LOG_LEVEL": "WARNING",
            "SLUICE_RATE_LIMIT": "1000000/minute",
            "SLUICE_MAX_STREAMS_PER_KEY": "100000",
        }
        service = start_service("log-tail", Path(tmp), env, workers=1)
        with running(service):
            url = f"{service.url}/logs/app?lines=0"
            cpu_before = cpu_seconds(service.pid)
            written, results, latencies = asyncio.run(
                run(url, log, args.followers, args.rate, args.seconds)
            )
            cpu = cpu_seconds(service.pid) - cpu_before
            rss = max(rss_mb(pid) for pid in children(service.pid))
    delivered = sum(r.lines for r in results)
    kept_up = [r for r in results if r.gaps == 0]
    rows = [
        [
            str(args.followers),
            f"{written:,}",
            f"{delivered:,}",
            f"{percentile(latencies, 0.5) * 1000:.1f}",
            f"{percentile(latencies, 0.99) * 1000:.1f}",
            f"{cpu / delivered * 1000:.4f}",
            str(sum(r.lost for r in kept_up)),
            f"{len(results) - len(kept_up)}",
            f"{rss:.0f}",
        ]
    ]
    print(f"{args.rate} lines/s for {args.seconds:g} s; one log-tail worker")
    print(
        table(
            [
                "followers",
                "written",
                "delivered",
                "latency p50 ms",
                "latency p99 ms",
                "CPU s/1k lines",
                "lost (kept up)",
                "followers with gaps",
                "RSS MB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
