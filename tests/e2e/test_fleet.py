"""chat-proxy in front of a fleet, through nginx: three real mock upstreams on 127.0.0.1,
127.0.0.2 and 127.0.0.3, chat-proxy under gunicorn (two workers), the openai SDK for every
API, one replica killed under steady load, and early headers' pings through the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from sluice_services.mock_upstream.routes import mock_text
from tests.chat_proxy.conftest import CALLER_KEY, UPSTREAM_KEY
from tests.support.metrics import value
from tests.support.procs import (
    Proc,
    free_port,
    running,
    start_nginx,
    start_service,
    worker_pids,
)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
TOKENS = 20
THINKER = "mock-fault:first_token_delay=2"  # a model that thinks 2 s before its first token


@dataclass
class Fleet:
    replicas: list[Proc]
    chat: Proc
    nginx: Proc


@pytest.fixture(scope="module")
def fleet(log_dir: Path) -> Iterator[Fleet]:
    port = free_port()
    mock_env = {
        "SLUICE_DEV_MOCK_TOKEN_DELAY": "0.01",
        "SLUICE_DEV_MOCK_TOKENS": str(TOKENS),
        "SLUICE_API_KEYS": UPSTREAM_KEY,
        "SLUICE_PUBLIC_ROUTES": "/mock/stats",
        "SLUICE_LOG_LEVEL": "WARNING",
        # One upstream key for the whole proxy: the mocks' per-key caps must not be what
        # the test measures (a 429 would cool a healthy replica down, as it should).
        "SLUICE_MAX_STREAMS_PER_KEY": "1000",
        "SLUICE_RATE_LIMIT": "100000/minute",
    }
    replicas: list[Proc] = []
    with contextlib.ExitStack() as stack:
        for host in HOSTS:
            proc = start_service("mock-upstream", log_dir, mock_env, 1, host=host, port=port)
            stack.enter_context(running(proc))
            replicas.append(proc)
        path = log_dir / "fleet-upstreams.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "upstreams": [
                        {
                            "name": f"r{n}",
                            "base_url": f"{p.url}/v1",
                            "api_key": "${FLEET_KEY}",
                            "max_streams": 100,
                        }
                        for n, p in enumerate(replicas, 1)
                    ],
                    "routing": {"failures": 2, "cooldown": 60},
                    "models": {THINKER: {"early_headers": True}},
                }
            )
        )
        env = {
            "SLUICE_API_KEYS": CALLER_KEY,
            "SLUICE_UPSTREAMS_FILE": str(path),
            "FLEET_KEY": UPSTREAM_KEY,
            "SLUICE_HEARTBEAT_INTERVAL": "0.5",
            "SLUICE_RATE_LIMIT": "100000/minute",
            "SLUICE_MAX_STREAMS_PER_KEY": "500",
        }
        chat = start_service("chat-proxy", log_dir, env, workers=2)
        stack.enter_context(running(chat))
        nginx = start_nginx({"chat-proxy": f"127.0.0.1:{chat.port}"}, log_dir)
        stack.enter_context(running(nginx))
        yield Fleet(replicas, chat, nginx)


def sdk(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.nginx.url}/v1", api_key=CALLER_KEY, max_retries=0)


def tokens(fleet: Fleet, kind: str) -> float:
    return value(fleet.chat.url, "sluice_chat_tokens_total", kind=kind)


def test_the_sdk_drives_every_api_through_nginx(fleet: Fleet) -> None:
    client = sdk(fleet)
    before = tokens(fleet, "completion")
    stream = client.completions.create(model="mock-gpt", prompt="Once upon", stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == mock_text(TOKENS)
    whole = client.completions.create(model="mock-gpt", prompt="Once upon")
    assert whole.choices[0].text == mock_text(TOKENS)
    assert whole.usage is not None and whole.usage.completion_tokens == TOKENS

    vectors = client.embeddings.create(model="mock-gpt", input=["a", "b"])  # base64 on the wire
    floats = client.embeddings.create(model="mock-gpt", input="a", encoding_format="float")
    assert len(vectors.data) == 2 and vectors.data[0].embedding == floats.data[0].embedding
    assert vectors.usage.prompt_tokens > 0

    deltas: list[str] = []
    completed = None
    with client.responses.stream(model="mock-gpt", input="Tell a story") as events:
        for event in events:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
    assert "".join(deltas) == mock_text(TOKENS)
    assert completed is not None and completed.usage is not None
    assert completed.usage.output_tokens == TOKENS
    answer = client.responses.create(model="mock-gpt", input="Tell a story")
    assert answer.output_text == mock_text(TOKENS)
    # Every answer was metered: 2 completions + 2 responses (embeddings have no completion).
    assert tokens(fleet, "completion") - before == 4 * TOKENS


def test_early_headers_keep_a_thinking_stream_alive_with_pings_through_nginx(fleet: Fleet) -> None:
    body = {"model": THINKER, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"authorization": f"Bearer {CALLER_KEY}"}
    started = time.perf_counter()
    arrivals: list[tuple[float, bytes]] = []
    with httpx.stream(
        "POST", f"{fleet.nginx.url}/v1/chat/completions", json=body, headers=headers, timeout=10
    ) as response:
        status_after = time.perf_counter() - started
        assert response.status_code == 200
        for chunk in response.iter_raw():
            arrivals.append((time.perf_counter() - started, chunk))
    assert status_after < 1.0  # the 200 did not wait for the 2 s of thinking
    first_data = next(t for t, c in arrivals if b"data: " in c)
    pings = [t for t, c in arrivals if c.startswith(b": ping") and t < first_data]
    assert first_data >= 1.9
    assert len(pings) >= 2, arrivals[:5]
    assert arrivals[-1][1].endswith(b"data: [DONE]\n\n")


def kill(proc: Proc) -> None:
    """A replica dies at once, master and workers, with no goodbye (SIGKILL, by pid)."""
    for pid in [*worker_pids(proc), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.popen.wait(10)


@dataclass
class Outcome:
    status: int
    done: bool


async def one_stream(client: httpx.AsyncClient, url: str) -> Outcome:
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    got = b""
    try:
        async with client.stream("POST", url, json=body) as response:
            async for chunk in response.aiter_raw():
                got += chunk
            return Outcome(response.status_code, got.endswith(b"data: [DONE]\n\n"))
    except httpx.HTTPError:
        return Outcome(0, False)


def test_killing_one_of_three_under_steady_load_fails_no_stream_that_had_no_byte(
    fleet: Fleet,
) -> None:
    victim = fleet.replicas[1]
    url = f"{fleet.nginx.url}/v1/chat/completions"
    outcomes: list[Outcome] = []

    async def load() -> None:
        headers = {"authorization": f"Bearer {CALLER_KEY}"}
        limits = httpx.Limits(max_connections=30)
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=15) as client:

            async def client_loop(n: int) -> None:
                for _ in range(12):  # bounded: 24 clients x 12 streams
                    outcomes.append(await one_stream(client, url))

            clients = asyncio.gather(*(client_loop(n) for n in range(24)))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(kill, victim)
            async with asyncio.timeout(60):
                await clients

    asyncio.run(load())
    assert len(outcomes) == 24 * 12
    # A stream that had not received a byte when its replica died was failed over: it has
    # its 200 (an error answer would be a non-200, bytes of JSON or not).
    refused = [o for o in outcomes if o.status != 200]
    assert refused == []
    cut = [o for o in outcomes if not o.done]
    # Only streams that were running on the victim when it died are cut (mid-stream: that
    # is resumable streams' subject); everything else completed.
    assert len(cut) <= 30, len(cut)
    assert len(outcomes) - len(cut) >= 24 * 12 - 30
    failovers = value(fleet.chat.url, "sluice_upstream_failovers_total", upstream="r2")
    assert failovers >= 1
    assert value(fleet.chat.url, "sluice_upstream_in_cooldown", upstream="r2") == 1
    assert value(fleet.chat.url, "sluice_upstream_in_cooldown", upstream="r1") == 0
    ready = httpx.get(f"{fleet.chat.url}/readyz", timeout=5)
    assert ready.status_code == 200
