"""chat-proxy's cost per stream, measured against direct and a bare pass-through, in one run.

    .venv/bin/python -m benchmarks.chat_proxy [--tokens 50] [--delay 0.02] [--levels 50,200]
                                              [--rounds 5] [--burst] [--fleet 3]
                                              [--resumable]

Starts the mock upstream (2 workers), then for each concurrency level streams
``4 x level`` completions of ``--tokens`` tokens through each path, in ``--rounds``
interleaved rounds (direct, bare, chat-proxy, ... then again), so that a noisy neighbour
on a shared machine hits every path alike:

* direct to the mock upstream;
* a bare aiohttp forwarder (benchmarks/bare_forwarder.py): the floor for any proxy;
* chat-proxy, one gunicorn worker, auth + limits + metrics on, with its own lean HTTP/1.1
  upstream client (chat_proxy/http1.py, its only one);
* nginx in front of chat-proxy (native).

``--fleet N`` (default 1) starts N mock upstreams (2 workers each) on 127.0.0.1 to
127.0.0.N at one port, and chat-proxy gets a fleet file (SLUICE_UPSTREAMS_FILE) of all N,
balanced with p2c: what the balancer, the endpoints and their pools cost per stream. The
bare forwarder then sends each request to the next mock (round robin), so both proxies read
from upstreams loaded alike (a less loaded mock sends more, smaller chunks: more reads for
any proxy; measured with the bare forwarder on the first mock only, that alone made the
fleet look 10-20% dearer); direct stays on the first mock. With 1, chat-proxy gets the one
mock as SLUICE_UPSTREAM_BASE_URL, no fleet file.

``--resumable`` gives chat-proxy a Redis (as make run does) and adds a path: the same
chat-proxy asked for resumable answers (``X-Sluice-Resumable: 1``): each event recorded in a
Redis Stream and read back through the core's follower; "CPU vs bare" then compares it with
the plain pass-through of the same process, on the same Redis.

Each of ``level`` clients runs streams back to back. By default the clients start spread
over one stream's duration, so ``level`` streams are open at any moment and arrivals are
steady, as with real traffic; ``--burst`` starts them all at once, so every round opens
``level`` streams in the same millisecond (a thundering herd: TTFT then measures queueing
behind the whole burst).

Prints TTFT p50/p99 (request sent to first content token, pooled over rounds), inter-token
p99, the proxy's CPU seconds per 1,000 streams (from /proc, master and workers; median of
the rounds) and its ratio to the bare forwarder's (median of the per-round ratios), the load
that puts on the proxy's one worker while ``level`` streams are open (CPU per stream x level
/ a stream's duration: near 100% the worker is saturated, and TTFT then measures its queue,
whatever the proxy), errors, and the worker's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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
    start_redis,
    start_service,
    wait_http,
)

from benchmarks.fleet import fleet_yaml, start_mocks
from benchmarks.support import cpu_seconds, percentile, rss_mb, table
from sluice.procfs import children

KEY = "sk-bench-chat-00000000000000000"
CONTENT = b'"content":"'


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: list[float] = field(default_factory=list)  # CPU s per 1,000 streams, one per round

    def add(self, other: Run) -> None:
        self.ttft += other.ttft
        self.gaps += other.gaps
        self.errors += other.errors


async def one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    run: Run,
    tokens: int,
    extra: dict[str, str] | None = None,
) -> None:
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {KEY}",
        **(extra or {}),
    }
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


async def drive(
    url: str,
    concurrency: int,
    streams: int,
    tokens: int,
    delay: float,
    spread: float = 0.0,
    extra: dict[str, str] | None = None,
) -> Run:
    """``streams`` streams from ``concurrency`` clients, started ``spread`` seconds apart in all."""
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

        async def worker(n: int) -> None:
            await asyncio.sleep(spread * n / concurrency)
            while queue:
                queue.pop()
                await one(session, url, body, run, tokens, extra)

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return run


@dataclass
class Target:
    name: str
    url: str
    procs: list[Proc]
    run: Run = field(default_factory=Run)
    headers: dict[str, str] = field(default_factory=dict)


def one_round(path: Target, args: argparse.Namespace, level: int) -> None:
    """``4 x level`` streams through one path; its CPU (per 1,000 streams) and samples."""
    streams = level * 4
    spread = 0.0 if args.burst else args.tokens * args.delay
    cpu_before = sum(cpu_seconds(p.pid) for p in path.procs)
    run = asyncio.run(
        drive(path.url, level, streams, args.tokens, args.delay, spread, path.headers)
    )
    cpu = sum(cpu_seconds(p.pid) for p in path.procs) - cpu_before
    path.run.add(run)
    path.run.cpu.append(cpu / streams * 1000)


def row(path: Target, level: int, direct: Run, bare: Run | None, stream_s: float) -> list[str]:
    run = path.run
    ttft99 = percentile(run.ttft, 0.99)
    added = "" if run is direct else f"{(ttft99 - percentile(direct.ttft, 0.99)) * 1000:+.1f}"
    workers = [c for p in path.procs for c in children(p.pid)] or [p.pid for p in path.procs]
    rss = max((rss_mb(pid) for pid in workers), default=0.0)
    ratio = ""
    if bare is not None and run is not bare and path.procs:
        ratio = f"{statistics.median(c / b for c, b in zip(run.cpu, bare.cpu, strict=True)):.2f}x"
    return [
        path.name,
        str(level),
        f"{percentile(run.ttft, 0.5) * 1000:.1f}",
        f"{ttft99 * 1000:.1f}",
        added,
        f"{percentile(run.gaps, 0.99) * 1000:.1f}",
        f"{statistics.median(run.cpu):.2f}" if path.procs else "-",
        ratio,
        # ``level`` streams open at once, each costing its CPU over ``stream_s`` seconds:
        f"{level * statistics.median(run.cpu) / 1000 / stream_s:.0%}" if path.procs else "-",
        str(run.errors),
        f"{rss:.0f}" if path.procs else "-",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--levels", default="50,200")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", action="store_true", help="start every client at once")
    parser.add_argument(
        "--fleet", type=int, default=1, help="mock upstreams chat-proxy balances over (1-50)"
    )
    parser.add_argument(
        "--resumable", action="store_true", help="also resumable answers (chat-proxy on Redis)"
    )
    args = parser.parse_args()
    if not 1 <= args.fleet <= 50:
        parser.error("--fleet: from 1 to 50 mock upstreams")
    levels = [int(x) for x in args.levels.split(",")]
    quiet = {"SLUICE_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        mock_env = {
            **quiet,
            "SLUICE_API_KEYS": KEY,
            "SLUICE_RATE_LIMIT": "1000000/minute",
            "SLUICE_MAX_STREAMS_PER_KEY": "100000",
        }
        mocks = start_mocks(logs, [""] * args.fleet, 2, mock_env)
        mock = mocks[0]  # (direct's and the bare forwarder's)
        upstream = f"{mock.url}/v1"
        chat_env = {
            **quiet,
            "SLUICE_API_KEYS": KEY,
            "SLUICE_RATE_LIMIT": "1000000/minute",
            "SLUICE_MAX_STREAMS_PER_KEY": "100000",
            "SLUICE_CHAT_TOKEN_LIMIT": "1000000000/hour",
        }
        if args.fleet == 1:
            chat_env["SLUICE_UPSTREAM_BASE_URL"] = upstream
        else:
            deployments = [
                {"name": f"mock-{n + 1}", "base_url": f"{m.url}/v1"} for n, m in enumerate(mocks)
            ]
            fleet_file = logs / "fleet.yaml"
            fleet_file.write_text(fleet_yaml(deployments, {"balance": "p2c"}))
            chat_env["SLUICE_UPSTREAMS_FILE"] = str(fleet_file)
        redis = start_redis(logs) if args.resumable else None
        if redis is not None:
            chat_env["SLUICE_REDIS_URL"] = redis.extra["url"]
        chat_native = start_service("chat-proxy", logs, chat_env, workers=1)
        bare_port = free_port()
        bare = start(
            "bare-forwarder",
            [
                sys.executable,
                "-m",
                "benchmarks.bare_forwarder",
                str(bare_port),
                *(f"{m.url}/v1" for m in mocks),  # (one, or the fleet's, round robin)
            ],
            logs,
        )
        bare.port = bare_port
        wait_http(f"{bare.url}/healthz", bare)
        nginx = start_nginx({"chat-proxy": f"127.0.0.1:{chat_native.port}"}, logs)
        rows = []
        notes: list[str] = []
        extras = [redis] if redis is not None else []
        with running(nginx, bare, chat_native, *mocks, *extras):
            for level in levels:
                route = "/v1/chat/completions"
                paths = [
                    Target("direct (mock upstream)", mock.url + route, []),
                    Target("bare aiohttp forwarder", bare.url + route, [bare]),
                    Target("chat-proxy (native)", chat_native.url + route, [chat_native]),
                    Target("nginx + chat-proxy (native)", nginx.url + route, [chat_native]),
                ]
                if args.resumable:
                    resumable = {"x-sluice-resumable": "1"}
                    paths.append(
                        Target(
                            "chat-proxy (resumable)",
                            chat_native.url + route,
                            [chat_native, *extras],
                            headers=resumable,
                        )
                    )
                for path in paths:  # warm up: pools, imports, caches
                    asyncio.run(
                        drive(
                            path.url, min(level, 20), 40, args.tokens, args.delay, 0.0, path.headers
                        )
                    )
                for _ in range(args.rounds):
                    for path in paths:
                        one_round(path, args, level)
                direct, bare_run = paths[0].run, paths[1].run
                stream_s = args.tokens * args.delay
                rows += [row(path, level, direct, bare_run, stream_s) for path in paths]
                if args.resumable:
                    plain, kept = paths[2].run.cpu, paths[-1].run.cpu
                    ratio = statistics.median(k / p for k, p in zip(kept, plain, strict=True))
                    notes.append(
                        f"{level} streams: a resumable stream costs {ratio:.2f}x a plain one "
                        "(CPU per 1,000 streams, chat-proxy + Redis, median of the rounds)"
                    )
    arrivals = "all clients at once (--burst)" if args.burst else "clients spread (steady)"
    if args.fleet > 1:
        print(
            f"chat-proxy: a fleet of {args.fleet} mock upstreams (127.0.0.1-{args.fleet}, "
            "2 workers each, p2c); the bare forwarder: the same mocks, round robin; direct: the "
            "first mock"
        )
    print(
        f"{args.tokens} tokens per stream, {args.delay * 1000:.0f} ms apart; "
        f"{args.rounds} rounds of 4 x concurrency streams per path; {arrivals}; "
        "one proxy worker"
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
                "CPU vs bare",
                "load",
                "errors",
                "RSS MB",
            ],
            rows,
        )
    )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
