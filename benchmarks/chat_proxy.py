"""chat-proxy's cost per stream, measured against direct and a bare pass-through, in one run.

    .venv/bin/python -m benchmarks.chat_proxy [--tokens 50] [--delay 0.02] [--levels 50,200]

Starts the mock upstream (2 workers), then for each concurrency level streams
``4 x level`` completions of ``--tokens`` tokens through each path:

* direct to the mock upstream;
* a bare aiohttp forwarder (benchmarks/bare_forwarder.py): the floor for any proxy;
* chat-proxy, one gunicorn worker, auth + limits + metrics on, aiohttp as upstream client;
* the same with httpx as upstream client;
* nginx in front of chat-proxy (aiohttp).

Prints TTFT p50/p99 (request sent to first content token), inter-token p99, the proxy's CPU
seconds per 1,000 streams (from /proc, master and workers), errors, and the worker's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tests.support.procs import (
    Proc,
    free_port,
    running,
    start,
    start_nginx,
    start_service,
    wait_http,
)

from benchmarks.support import children, cpu_seconds, percentile, rss_mb, table

KEY = "sk-bench-chat-00000000000000000"
CONTENT = b'"content":"'


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: int = 0


async def one(session: aiohttp.ClientSession, url: str, body: bytes, run: Run, tokens: int) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    started = time.perf_counter()
    last = None
    seen = 0
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                run.errors += 1
                await response.read()
                return
            async for chunk in response.content.iter_any():
                count = chunk.count(CONTENT) - chunk.count(b'"content":""')
                if count <= 0:
                    continue
                now = time.perf_counter()
                if last is None:
                    run.ttft.append(now - started)
                else:
                    run.gaps.append(now - last)
                last = now
                seen += count
    except aiohttp.ClientError:
        run.errors += 1
        return
    if seen != tokens:
        run.errors += 1


async def drive(url: str, concurrency: int, streams: int, tokens: int, delay: float) -> Run:
    run = Run()
    body = json.dumps(
        {
            "model": f"mock-fault:tokens={tokens},delay={delay}",
            "stream": True,
            "messages": [{"role": "user", "content": "benchmark"}],
        }
    ).encode()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        queue = list(range(streams))

        async def worker() -> None:
            while queue:
                queue.pop()
                await one(session, url, body, run, tokens)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run


def measure(
    name: str, url: str, procs: list[Proc], args: argparse.Namespace, level: int, direct: Run | None
) -> tuple[list[str], Run]:
    asyncio.run(drive(url, min(level, 20), 40, args.tokens, args.delay))  # warm up
    streams = level * 4
    cpu_before = sum(cpu_seconds(p.pid) for p in procs)
    run = asyncio.run(drive(url, level, streams, args.tokens, args.delay))
    cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu_before
    ttft50, ttft99 = percentile(run.ttft, 0.5), percentile(run.ttft, 0.99)
    added = "" if direct is None else f"{(ttft99 - percentile(direct.ttft, 0.99)) * 1000:+.1f}"
    workers = [c for p in procs for c in children(p.pid)] or [p.pid for p in procs]
    rss = max((rss_mb(pid) for pid in workers), default=0.0) if procs else 0.0
    row = [
        name,
        str(level),
        f"{ttft50 * 1000:.1f}",
        f"{ttft99 * 1000:.1f}",
        added,
        f"{percentile(run.gaps, 0.99) * 1000:.1f}",
        f"{cpu / streams * 1000:.2f}" if procs else "-",
        str(run.errors),
        f"{rss:.0f}" if procs else "-",
    ]
    return row, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--levels", default="50,200")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    quiet = {"SLUICE_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        mock = start_service(
            "mock-upstream",
            logs,
            {
                **quiet,
                "SLUICE_API_KEYS": KEY,
                "SLUICE_RATE_LIMIT": "1000000/minute",
                "SLUICE_MAX_STREAMS_PER_KEY": "100000",
            },
            workers=2,
        )
        upstream = f"{mock.url}/v1"
        chat_env = {
            **quiet,
            "SLUICE_API_KEYS": KEY,
            "SLUICE_UPSTREAM_BASE_URL": upstream,
            "SLUICE_RATE_LIMIT": "1000000/minute",
            "SLUICE_MAX_STREAMS_PER_KEY": "100000",
            "SLUICE_CHAT_TOKEN_LIMIT": "1000000000/hour",
        }
        chat_aiohttp = start_service(
            "chat-proxy", logs, {**chat_env, "SLUICE_UPSTREAM_CLIENT": "aiohttp"}, workers=1
        )
        chat_httpx = start_service(
            "chat-proxy", logs, {**chat_env, "SLUICE_UPSTREAM_CLIENT": "httpx"}, workers=1
        )
        bare_port = free_port()
        bare = start(
            "bare-forwarder",
            [sys.executable, "-m", "benchmarks.bare_forwarder", str(bare_port), upstream],
            logs,
        )
        bare.port = bare_port
        wait_http(f"{bare.url}/healthz", bare)
        nginx = start_nginx({"chat-proxy": f"127.0.0.1:{chat_aiohttp.port}"}, logs)
        rows = []
        with running(nginx, bare, chat_httpx, chat_aiohttp, mock):
            for level in levels:
                path = "/v1/chat/completions"
                row, direct = measure(
                    "direct (mock upstream)", mock.url + path, [], args, level, None
                )
                rows.append(row)
                for name, url, procs in (
                    ("bare aiohttp forwarder", bare.url + path, [bare]),
                    ("chat-proxy (aiohttp)", chat_aiohttp.url + path, [chat_aiohttp]),
                    ("chat-proxy (httpx)", chat_httpx.url + path, [chat_httpx]),
                    ("nginx + chat-proxy (aiohttp)", nginx.url + path, [chat_aiohttp]),
                ):
                    rows.append(measure(name, url, procs, args, level, direct)[0])
    print(
        f"{args.tokens} tokens per stream, {args.delay * 1000:.0f} ms apart; "
        f"4 x concurrency streams per row; one proxy worker"
    )
    print(
        table(
            [
                "path",
                "conc",
                "TTFT p50 ms",
                "TTFT p99 ms",
                "p99 vs direct",
                "ITL p99 ms",
                "CPU s/1k streams",
                "errors",
                "RSS MB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
