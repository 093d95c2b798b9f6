"""chat-proxy's fleet: balancing and failover, measured in one run.

    .venv/bin/python -m benchmarks.fleet [--rounds 3] [--streams 600] [--concurrency 60]
                                         [--tokens 20] [--delay 0.02]
                                         [--failover-streams 200] [--failover-concurrency 1]

Balancing. Three mock upstreams, one worker each, on 127.0.0.1, .2 and .3 (one port, as
replicas behind a headless Service): two fast to their first token (``first_token_delay=
0.05``) and one 5x slower (0.25 s: a replica deep in a long prefill), every stream then
``--tokens`` tokens ``--delay`` s apart. Two chat-proxies (one gunicorn worker each, auth +
limits + metrics on) read the same fleet file but for ``routing.balance``: ``p2c`` and
``round_robin`` (blind to load and speed: the baseline). Both are up the whole run and take
turns (p2c, round_robin, p2c, ...: a noisy neighbour on a shared machine hits both alike),
``--streams`` streams at ``--concurrency`` a round, ``--rounds`` rounds, after a warm-up in
which p2c learns each endpoint's first-token time. The clients start spread over one
stream's duration, so arrivals are steady. Per mode: the streams each mock got (its
``/mock/stats`` deltas, so what the mocks saw, not what the proxy says), the client-seen TTFT
p50/p99 (request sent to first content token, pooled over rounds), the proxy's CPU per
1,000 streams (median of the rounds) and errors; then p2c's TTFT over round_robin's.

Failover. A fleet of a failing deployment (``status=503``) at priority 0 and a healthy one
at priority 1, with ``routing.failures: 1000`` so the failing one never cools down and
every stream fails over from it exactly once, against a fleet of only the healthy one (the
same mock), and the failing attempt alone (the same POST straight to the failing mock, to
the end of its 503). Short streams (5 tokens), ``--failover-concurrency`` at a time
(default 1: sequential, nothing queues), the three paths in turns over the rounds. What a
failover adds to the client's wait beyond the failed try itself is
TTFT(failover) - TTFT(healthy only) - the failing attempt's time, at p50 and at p99; the
issue's bar is < 50 ms. Every failover stream must say ``x-sluice-attempts: 2`` (and every
healthy-only one 1); the counts are printed.

Every loop is bounded in count and each round in time; all traffic goes to 127.0.0.x; every
process is stopped by its pid when the run ends, however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from tests.support.procs import Proc, free_port, start_service

from benchmarks.support import cpu_seconds, percentile, table

KEY = "sk-bench-fleet-0000000000000000"
CONTENT = b'"content":"'
EMPTY = b'"content":""'  # the role delta: no token yet
QUIET = {"SLUICE_LOG_LEVEL": "WARNING"}
UNLIMITED = {"SLUICE_RATE_LIMIT": "1000000/minute", "SLUICE_MAX_STREAMS_PER_KEY": "100000"}
LIMITS = {  # per-key limits out of the way, as in benchmarks/chat_proxy.py
    "SLUICE_API_KEYS": KEY,
    "SLUICE_RATE_LIMIT": "1000000/minute",
    "SLUICE_MAX_STREAMS_PER_KEY": "100000",
    "SLUICE_CHAT_TOKEN_LIMIT": "1000000000/hour",
}
FAST, SLOW = 0.05, 0.25  # s to the first token
STREAM_TIMEOUT = 60.0  # s, one request, whole
FAILURES = 1000  # routing.failures' most: the failing deployment never cools down
FAILOVER_TOKENS, FAILOVER_DELAY = 5, 0.002
WARMUP = 60  # streams through each proxy before the first round
FAILOVER_WARMUP = 10  # requests on each failover path before the first round
# A plain model name: a "mock-fault:" one would override each mock's own fault.
BODY = json.dumps(
    {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "benchmark"}]}
).encode()


def fleet_yaml(upstreams: Sequence[Mapping[str, Any]], routing: Mapping[str, Any]) -> str:
    """A fleet file's text (JSON is YAML: nothing to quote by hand)."""
    return json.dumps({"upstreams": list(upstreams), "routing": dict(routing)}, indent=2)


def start_mocks(
    logs: Path,
    faults: Sequence[str],
    workers: int = 1,
    env: Mapping[str, str] | None = None,
) -> list[Proc]:
    """One mock upstream per fault spec (``""``: none), on 127.0.0.1, .2, ... at one port.
    The ones started are stopped if a later one fails to start."""
    port = free_port()
    mocks: list[Proc] = []
    try:
        for n, fault in enumerate(faults):
            # Unlimited: chat-proxy is one caller of each mock, and a mock's own default
            # limits (120 requests a minute, 20 streams) would be what the run measures.
            mock_env = {**QUIET, **UNLIMITED, **(env or {}), "SLUICE_DEV_MOCK_FAULT": fault}
            host = f"127.0.0.{n + 1}"
            mocks.append(
                start_service("mock-upstream", logs, mock_env, workers, host=host, port=port)
            )
    except BaseException:
        for mock in mocks:
            mock.stop()
        raise
    return mocks


def start_chat_proxy(logs: Path, name: str, text: str) -> Proc:
    """chat-proxy, one worker, auth + limits + metrics on, reading the fleet file ``text``."""
    path = logs / f"fleet-{name}.yaml"
    path.write_text(text)
    env = {**QUIET, **LIMITS, "SLUICE_UPSTREAMS_FILE": str(path)}
    return start_service("chat-proxy", logs, env, workers=1)


@dataclass
class Sample:
    """One path's figures, pooled over rounds."""

    ttft: list[float] = field(default_factory=list)  # s; for a bare 503: to its end
    errors: int = 0
    attempts: Counter[str] = field(default_factory=Counter)  # x-sluice-attempts values
    streams: Counter[str] = field(default_factory=Counter)  # per mock, from /mock/stats
    cpu: list[float] = field(default_factory=list)  # CPU s per 1,000 streams, per round


HEADERS = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
UPSTREAM_HEADERS = {"content-type": "application/json"}  # chat-proxy's to a keyless mock


async def stream(session: aiohttp.ClientSession, url: str, tokens: int, sample: Sample) -> None:
    """One stream; its TTFT when it came whole (``tokens`` content tokens), else an error."""
    started = time.perf_counter()
    first = None
    seen = 0
    try:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            sample.attempts[response.headers.get("x-sluice-attempts", "none")] += 1
            if response.status != 200:
                sample.errors += 1
                await response.read()
                return
            async for chunk in response.content.iter_any():
                count = chunk.count(CONTENT) - chunk.count(EMPTY)
                if count > 0 and first is None:
                    first = time.perf_counter() - started
                seen += max(count, 0)
    except (aiohttp.ClientError, TimeoutError):
        sample.errors += 1
        return
    if first is None or seen != tokens:
        sample.errors += 1
        return
    sample.ttft.append(first)


async def refused(session: aiohttp.ClientSession, url: str, sample: Sample) -> None:
    """The failing attempt alone: the POST to the failing mock, to the end of its 503."""
    started = time.perf_counter()
    try:
        async with session.post(url, data=BODY, headers=UPSTREAM_HEADERS) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        sample.errors += 1
        return
    if status != 503:
        sample.errors += 1
        return
    sample.ttft.append(time.perf_counter() - started)


One = Callable[[aiohttp.ClientSession], Awaitable[None]]


def streams_to(url: str, tokens: int, sample: Sample) -> One:
    async def one(session: aiohttp.ClientSession) -> None:
        await stream(session, url, tokens, sample)

    return one


def refusals_of(url: str, sample: Sample) -> One:
    async def one(session: aiohttp.ClientSession) -> None:
        await refused(session, url, sample)

    return one


async def drive(count: int, concurrency: int, one: One, spread: float, limit: float) -> None:
    """``count`` requests from ``concurrency`` clients started ``spread`` s apart in all,
    each running them back to back; TimeoutError past ``limit`` s."""
    clients = max(1, min(concurrency, count))
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT)
    left = count
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(n: int) -> None:
            nonlocal left
            await asyncio.sleep(spread * n / clients)
            while left > 0:
                left -= 1
                await one(session)

        async with asyncio.timeout(limit):
            await asyncio.gather(*(client(n) for n in range(clients)))


def round_limit(count: int, concurrency: int, stream_s: float) -> float:
    """A generous bound on one round's time: 4x its ideal plus a minute."""
    return 4 * (count / max(1, concurrency) + 1) * stream_s + 60


def mock_counts(mocks: Sequence[Proc]) -> list[dict[str, int]]:
    return [httpx.get(f"{m.url}/mock/stats", timeout=5).json() for m in mocks]


def run_round(
    proxy: Proc,
    sample: Sample,
    mocks: Mapping[str, Proc],
    go: Coroutine[Any, Any, None],
    count: int,
    key: str = "streams",
) -> None:
    """One round (``go``) through ``proxy``: its CPU per 1,000 requests and each mock's
    ``key`` count delta."""
    names, procs = list(mocks), list(mocks.values())
    before, cpu = mock_counts(procs), cpu_seconds(proxy.pid)
    asyncio.run(go)
    cpu = cpu_seconds(proxy.pid) - cpu
    after = mock_counts(procs)
    for name, old, new in zip(names, before, after, strict=True):
        sample.streams[name] += new.get(key, 0) - old.get(key, 0)
    sample.cpu.append(cpu / count * 1000)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def balancing(args: argparse.Namespace, logs: Path, stack: contextlib.ExitStack) -> str:
    faults = [f"first_token_delay={FAST}", f"first_token_delay={FAST}", f"first_token_delay={SLOW}"]
    tokens = {"SLUICE_DEV_MOCK_TOKENS": str(args.tokens)}
    mock_env = {**tokens, "SLUICE_DEV_MOCK_TOKEN_DELAY": str(args.delay)}
    procs = start_mocks(logs, faults, 1, mock_env)
    for proc in procs:
        stack.callback(proc.stop)
    mocks = dict(zip(("fast-1", "fast-2", "slow"), procs, strict=True))
    upstreams = [{"name": n, "base_url": f"{m.url}/v1"} for n, m in mocks.items()]
    modes = ("p2c", "round_robin")
    proxies = {}
    for mode in modes:
        text = fleet_yaml(upstreams, {"balance": mode, "failures": 3, "cooldown": 30})
        proxies[mode] = start_chat_proxy(logs, mode, text)
        stack.callback(proxies[mode].stop)
    samples = {mode: Sample() for mode in modes}
    stream_s = SLOW + args.tokens * args.delay
    spread = args.tokens * args.delay
    limit = round_limit(args.streams, args.concurrency, stream_s)
    urls = {mode: proxies[mode].url + "/v1/chat/completions" for mode in modes}
    for mode in modes:  # warm up: pools, imports; p2c learns each endpoint's TTFT
        asyncio.run(drive(WARMUP, 20, streams_to(urls[mode], args.tokens, Sample()), 0.0, limit))
    for _ in range(args.rounds):
        for mode in modes:
            one = streams_to(urls[mode], args.tokens, samples[mode])
            go = drive(args.streams, args.concurrency, one, spread, limit)
            run_round(proxies[mode], samples[mode], mocks, go, args.streams)
    rows = []
    for mode in modes:
        sample = samples[mode]
        total = sum(sample.streams.values()) or 1
        shares = [f"{sample.streams[n]} ({sample.streams[n] / total:.0%})" for n in mocks]
        rows.append(
            [
                mode,
                *shares,
                ms(percentile(sample.ttft, 0.5)),
                ms(percentile(sample.ttft, 0.99)),
                f"{statistics.median(sample.cpu):.2f}",
                str(sample.errors),
            ]
        )
    p2c, rr = samples["p2c"].ttft, samples["round_robin"].ttft
    ratio50 = percentile(p2c, 0.5) / percentile(rr, 0.5)
    ratio99 = percentile(p2c, 0.99) / percentile(rr, 0.99)
    head = (
        f"Balancing: 3 mock upstreams (fast-1, fast-2: first token {FAST * 1000:.0f} ms; slow: "
        f"{SLOW * 1000:.0f} ms), {args.tokens} tokens {args.delay * 1000:.0f} ms apart; "
        f"{args.rounds} rounds of {args.streams} streams at {args.concurrency} concurrent "
        "per mode, interleaved; one proxy worker each"
    )
    headers = ["balance", *(f"streams {n}" for n in mocks)]
    headers += ["TTFT p50 ms", "TTFT p99 ms", "CPU s/1k streams", "errors"]
    ratios = f"p2c / round_robin: TTFT p50 {ratio50:.2f}x, TTFT p99 {ratio99:.2f}x"
    return "\n".join([head, table(headers, rows), ratios])


def failover(args: argparse.Namespace, logs: Path, stack: contextlib.ExitStack) -> str:
    mock_env = {
        "SLUICE_DEV_MOCK_TOKENS": str(FAILOVER_TOKENS),
        "SLUICE_DEV_MOCK_TOKEN_DELAY": str(FAILOVER_DELAY),
    }
    healthy, failing = start_mocks(logs, ["", "status=503"], 1, mock_env)
    stack.callback(healthy.stop)
    stack.callback(failing.stop)
    good = {"name": "healthy", "base_url": f"{healthy.url}/v1"}
    bad = {"name": "failing", "base_url": f"{failing.url}/v1", "priority": 0}
    routing = {"failures": FAILURES, "cooldown": 30, "attempts": 3}
    only = start_chat_proxy(logs, "healthy-only", fleet_yaml([good], routing))
    stack.callback(only.stop)
    fleet = fleet_yaml([bad, {**good, "priority": 1}], routing)
    over = start_chat_proxy(logs, "failover", fleet)
    stack.callback(over.stop)
    mocks = {"healthy": healthy, "failing": failing}
    route = "/v1/chat/completions"
    names = ("healthy only", "failover (503, then healthy)", "failing attempt alone (to 503's end)")
    samples = [Sample(), Sample(), Sample()]
    # (the process whose CPU is counted, how one request of a sample goes)
    ways: list[tuple[Proc, Callable[[Sample], One]]] = [
        (only, lambda sample: streams_to(only.url + route, FAILOVER_TOKENS, sample)),
        (over, lambda sample: streams_to(over.url + route, FAILOVER_TOKENS, sample)),
        (failing, lambda sample: refusals_of(failing.url + route, sample)),
    ]
    per_round = max(1, args.failover_streams // args.rounds)
    stream_s = FAILOVER_TOKENS * FAILOVER_DELAY + 0.05
    limit = round_limit(per_round, args.failover_concurrency, stream_s)
    for _, way in ways:  # warm up: pools, imports
        asyncio.run(drive(FAILOVER_WARMUP, 1, way(Sample()), 0.0, limit))
    for _ in range(args.rounds):
        for (proc, way), sample in zip(ways, samples, strict=True):
            go = drive(per_round, args.failover_concurrency, way(sample), 0.0, limit)
            run_round(proc, sample, mocks, go, per_round, key="requests")
    rows = []
    for name, sample in zip(names, samples, strict=True):
        attempts = ", ".join(f"{k}: {v}" for k, v in sorted(sample.attempts.items()))
        seen = ", ".join(f"{n} {sample.streams[n]}" for n in mocks)
        rows.append(
            [
                name,
                str(len(sample.ttft) + sample.errors),
                ms(percentile(sample.ttft, 0.5)),
                ms(percentile(sample.ttft, 0.99)),
                attempts or "-",
                seen,
                str(sample.errors),
            ]
        )
    healthy_s, over_s, alone_s = samples
    added = {
        q: percentile(over_s.ttft, q) - percentile(healthy_s.ttft, q) - percentile(alone_s.ttft, q)
        for q in (0.5, 0.99)
    }
    total = per_round * args.rounds
    twice = over_s.attempts.get("2", 0)
    verdict = "within" if max(added.values()) < 0.050 else "OVER"
    head = (
        f"Failover: {args.rounds} rounds of {per_round} streams per path ({FAILOVER_TOKENS} "
        f"tokens, {FAILOVER_DELAY * 1000:.0f} ms apart), {args.failover_concurrency} at a time; "
        f"routing.failures {FAILURES}: every failover stream tries the failing mock first"
    )
    headers = ["path", "requests", "TTFT p50 ms", "TTFT p99 ms", "x-sluice-attempts"]
    headers += ["mock requests", "errors"]
    lines = [
        head,
        table(headers, rows),
        f"added by a failover (TTFT failover - healthy only - failing attempt): "
        f"p50 {added[0.5] * 1000:+.1f} ms, p99 {added[0.99] * 1000:+.1f} ms "
        f"({verdict} the bar of 50 ms)",
        f"failover streams with x-sluice-attempts 2: {twice} of {total}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=600, help="per mode per round")
    parser.add_argument("--concurrency", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--failover-streams", type=int, default=200, help="per path, all rounds")
    parser.add_argument("--failover-concurrency", type=int, default=1)
    args = parser.parse_args()
    if min(args.rounds, args.streams, args.concurrency, args.tokens) < 1:
        parser.error("--rounds, --streams, --concurrency and --tokens must be at least 1")
    if args.failover_concurrency < 1 or args.failover_streams < 1:
        parser.error("--failover-streams and --failover-concurrency must be at least 1")
    failovers = max(1, args.failover_streams // args.rounds) * args.rounds + FAILOVER_WARMUP
    if failovers >= FAILURES:  # the failing deployment would cool down: no failover then
        most = FAILURES - FAILOVER_WARMUP - 1
        parser.error(f"--failover-streams (at least --rounds): at most {most}")
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        with contextlib.ExitStack() as stack:  # (its processes gone before the next start)
            print(balancing(args, logs, stack), flush=True)
        print()
        with contextlib.ExitStack() as stack:
            print(failover(args, logs, stack))


if __name__ == "__main__":
    main()
