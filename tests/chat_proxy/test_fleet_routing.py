"""chat-proxy in front of a fleet, through its ASGI app: real mock upstreams on 127.0.0.1,
127.0.0.2 and 127.0.0.3 (one port, as the replicas of one name), balancing, failover
before the first byte, cooldown and recovery, caps, aliases, DNS, early headers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from pydantic import SecretStr

from sluice_services.chat_proxy import endpoints as endpoints_module
from sluice_services.chat_proxy.app import create_app
from sluice_services.chat_proxy.metrics import COOLDOWNS, FAILOVERS, TOKENS
from sluice_services.chat_proxy.proxy import ChatProxy
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.mock_upstream.routes import mock_text
from tests.chat_proxy.conftest import CALLER_KEY, UPSTREAM_KEY
from tests.support import asgi
from tests.support.hostile_upstream import Peer, head, hostile_upstream
from tests.support.logs import captured
from tests.support.metrics import counted
from tests.support.procs import Proc, free_port, running, start_service

pytestmark = pytest.mark.anyio

AUTH = ("authorization", f"Bearer {CALLER_KEY}")
JSON = ("content-type", "application/json")
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
MOCK_ENV = {
    "SLUICE_DEV_MOCK_TOKEN_DELAY": "0.005",
    "SLUICE_DEV_MOCK_TOKENS": "10",
    "SLUICE_API_KEYS": UPSTREAM_KEY,
    "SLUICE_PUBLIC_ROUTES": "/mock/stats,/mock/requests/{request_id}",
    "SLUICE_LOG_LEVEL": "WARNING",
    "SLUICE_MAX_STREAMS_PER_KEY": "1000",  # (the proxy's one key: its caps are not tested here)
    "SLUICE_RATE_LIMIT": "100000/minute",
}


def mock(log_dir: Path, host: str = "127.0.0.1", port: int | None = None, **env: str) -> Proc:
    return start_service("mock-upstream", log_dir, {**MOCK_ENV, **env}, 1, host=host, port=port)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    """Three mock upstreams, one port, three loopback addresses: one name's replicas."""
    log_dir = tmp_path_factory.mktemp("replicas")
    port = free_port()
    procs: list[Proc] = []
    try:
        for host in HOSTS:
            procs.append(mock(log_dir, host, port))
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A model server that answers every request with a 503."""
    proc = mock(tmp_path_factory.mktemp("failing"), SLUICE_DEV_MOCK_FAULT="status=503")
    with running(proc):
        yield proc


@pytest.fixture(scope="module")
def thinking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A model server whose first token takes 3 s."""
    log_dir = tmp_path_factory.mktemp("thinking")
    proc = mock(log_dir, SLUICE_DEV_MOCK_FAULT="first_token_delay=3")
    with running(proc):
        yield proc


def upstream(name: str, url: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "base_url": f"{url}/v1", "api_key": UPSTREAM_KEY, **fields}


def fleet(tmp_path: Path, upstreams: list[dict[str, Any]], **top: Any) -> Path:
    path = tmp_path / "upstreams.yaml"
    path.write_text(yaml.safe_dump({"upstreams": upstreams, **top}))
    return path


def app_for(path: Path, **overrides: Any) -> FastAPI:
    values: dict[str, Any] = {
        "api_keys": SecretStr(CALLER_KEY),
        "upstreams_file": path,
        "upstream_read_timeout": 3.0,
        "upstream_connect_timeout": 1.0,
        "max_streams_per_key": 100,
        "rate_limit": "10000/minute",
        **overrides,
    }
    return create_app(ChatSettings(**values))


def proxy_of(app: FastAPI) -> ChatProxy:
    for resource in app.state.runtime.resources:
        owner = getattr(resource, "__self__", None)
        if isinstance(owner, ChatProxy):
            return owner
    raise AssertionError("no chat proxy in the app")


def chat(stream: bool = True, model: str = "mock-gpt", **extra: Any) -> bytes:
    messages = [{"role": "user", "content": "hello fleet"}]
    return json.dumps({"model": model, "messages": messages, "stream": stream, **extra}).encode()


async def post(app: FastAPI, payload: bytes, **kw: Any) -> asgi.Result:
    return await asgi.request(
        app, "/v1/chat/completions", method="POST", headers=[AUTH, JSON], body=payload, **kw
    )


def text_of(result: asgi.Result) -> str:
    out = []
    for line in result.text.split("\n"):
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


async def stats(proc: Proc) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        got: dict[str, int] = (await client.get(f"{proc.url}/mock/stats")).json()
        return got


async def streams_of(procs: list[Proc]) -> list[int]:
    return [(await stats(p))["streams"] for p in procs]


@asynccontextmanager
async def serving(path: Path, **overrides: Any) -> AsyncIterator[FastAPI]:
    async with asgi.lifespan(app_for(path, **overrides)) as app:
        yield app


async def test_streams_spread_over_every_replica_and_the_answer_is_whole(
    tmp_path: Path, replicas: list[Proc]
) -> None:
    path = fleet(tmp_path, [upstream(f"r{n}", p.url) for n, p in enumerate(replicas)])
    before = await streams_of(replicas)
    async with serving(path) as app:
        results = await asyncio.gather(*(post(app, chat()) for _ in range(30)))
    assert [(r.status, text_of(r)) for r in results] == [(200, mock_text(10))] * 30
    got = [a - b for a, b in zip(await streams_of(replicas), before, strict=True)]
    assert sum(got) == 30
    assert all(n >= 5 for n in got), got  # 30 concurrent streams: each replica takes a share


async def test_a_name_with_several_addresses_is_several_endpoints_and_is_re_resolved(
    tmp_path: Path, replicas: list[Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {"fleet.test": list(HOSTS)}
    asked: list[str] = []

    async def stub(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in answers:
            raise OSError(f"{host}: no such name")
        return answers[host]

    monkeypatch.setattr(endpoints_module, "resolve", stub)
    port = replicas[0].port
    entry = upstream("vllm", f"http://fleet.test:{port}")
    path = fleet(tmp_path, [entry], routing={"resolve_interval": 1})
    before = await streams_of(replicas)
    async with serving(path) as app:
        proxy = proxy_of(app)
        assert sorted(e.address for e in proxy.endpoints.all()) == list(HOSTS)
        results = await asyncio.gather(*(post(app, chat()) for _ in range(30)))
        assert all(r.status == 200 for r in results)
        got = [a - b for a, b in zip(await streams_of(replicas), before, strict=True)]
        assert all(n >= 5 for n in got), got
        # The Service scaled in: .1 and .3 are gone; new streams go to .2 only.
        answers["fleet.test"] = ["127.0.0.2"]
        deadline = time.monotonic() + 5
        while len(proxy.endpoints.all()) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert [e.address for e in proxy.endpoints.all()] == ["127.0.0.2"]
        middle = await streams_of(replicas)
        results = await asyncio.gather(*(post(app, chat()) for _ in range(6)))
        assert all(r.status == 200 for r in results)
        got = [a - b for a, b in zip(await streams_of(replicas), middle, strict=True)]
        assert got == [0, 6, 0]
        # A DNS outage keeps the addresses known.
        del answers["fleet.test"]
        await asyncio.sleep(1.3)
        assert [e.address for e in proxy.endpoints.all()] == ["127.0.0.2"]
        assert (await post(app, chat())).status == 200
    assert asked.count("fleet.test") >= 3
    # The Host header is the name, not the address (virtual hosts, TLS).


async def test_aliases_map_a_client_name_to_each_deployments_own(
    tmp_path: Path, replicas: list[Proc]
) -> None:
    a, b = replicas[0], replicas[1]
    path = fleet(
        tmp_path,
        [
            upstream("a", a.url, models=[{"house-model": "mock-gpt"}]),
            upstream("b", b.url, models={"house-mini": "mock-gpt-mini", "mock-gpt": "mock-gpt"}),
        ],
    )
    async with serving(path) as app:
        result = await post(app, chat(model="house-model"), timeout=5)
        assert result.status == 200
        missing = await post(app, chat(model="gpt-5"))
        assert missing.status == 404
        assert json.loads(missing.body)["error"]["code"] == "model_not_found"
        models = await asgi.request(app, "/v1/models", headers=[AUTH])
    ids = {m["id"] for m in json.loads(models.body)["data"]}
    assert ids == {"house-model", "house-mini", "mock-gpt"}


async def test_models_is_the_union_of_the_fleet(
    tmp_path: Path, replicas: list[Proc], failing: Proc
) -> None:
    path = fleet(
        tmp_path,
        [
            upstream("named", replicas[0].url, models=["house-model"]),
            upstream("catch-all", replicas[1].url),  # lists its own: mock-gpt, mock-gpt-mini
            upstream("down", f"http://127.0.0.1:{free_port()}"),  # skipped, logged
        ],
    )
    async with serving(path) as app:
        result = await asgi.request(app, "/v1/models", headers=[AUTH])
    assert result.status == 200
    ids = [m["id"] for m in json.loads(result.body)["data"]]
    assert sorted(ids) == ["house-model", "mock-gpt", "mock-gpt-mini"]


async def test_a_dead_endpoint_is_failed_over_then_cooled_down_then_probed_back(
    tmp_path: Path, replicas: list[Proc]
) -> None:
    dead_port = free_port()
    path = fleet(
        tmp_path,
        [
            upstream("dead", f"http://127.0.0.1:{dead_port}"),
            upstream("live", replicas[0].url, priority=1),
        ],
        routing={"failures": 2, "cooldown": 1},
    )
    failed_before = counted(FAILOVERS.labels("chat-proxy", "dead", "connect"))
    cooled_before = counted(COOLDOWNS.labels("chat-proxy", "dead"))
    with captured("chat_proxy") as records:
        async with serving(path) as app:
            first = [await post(app, chat()) for _ in range(4)]
            assert all(r.status == 200 and text_of(r) == mock_text(10) for r in first)
            # Two tries of the dead one (each failed over to live), then it is out.
            assert [r.headers["x-sluice-attempts"] for r in first] == ["2", "2", "1", "1"]
            ready = await asgi.request(app, "/readyz")
            assert ready.status == 200  # live is usable
            # The dead one comes back up: after the cooldown one probe finds it, and it is used.
            revived = mock(tmp_path, port=dead_port)
            with running(revived):
                await asyncio.sleep(1.1)
                probe = await post(app, chat())
                assert probe.status == 200 and probe.headers["x-sluice-attempts"] == "1"
                assert (await stats(revived))["streams"] == 1

    assert counted(FAILOVERS.labels("chat-proxy", "dead", "connect")) - failed_before == 2
    assert counted(COOLDOWNS.labels("chat-proxy", "dead")) - cooled_before == 1
    attempts = [r for r in records if r.getMessage() == "upstream attempt failed"]
    assert [getattr(r, "upstream", None) for r in attempts] == ["dead", "dead"]
    assert all(UPSTREAM_KEY not in str(r.__dict__) for r in records)


async def test_5xx_and_429_fail_over_and_429s_retry_after_is_its_cooldown(
    tmp_path: Path, replicas: list[Proc], failing: Proc
) -> None:
    async with hostile_upstream() as server:

        async def too_many(peer: Peer) -> None:
            body = b'{"error":{"message":"slow down","type":"rate_limit","code":"rl"}}'
            await peer.send(head(429, [("retry-after", "2")], len(body)) + body)

        path = fleet(
            tmp_path,
            [
                upstream("busy", server.base_url.removesuffix("/v1")),
                upstream("failing", failing.url),
                upstream("live", replicas[0].url, priority=1),
            ],
            routing={"failures": 5, "cooldown": 10, "attempts": 3},
        )
        async with serving(path) as app:
            proxy = proxy_of(app)
            busy = next(e for e in proxy.endpoints.all() if e.name == "busy")
            server.arm(too_many)
            results = [await post(app, chat()) for _ in range(3)]
            assert all(r.status == 200 for r in results)
            assert busy.breaker.cooling(time.monotonic())  # one 429 is enough: it said when
            assert 1.5 < busy.breaker.until - time.monotonic() <= 2.0
    assert counted(FAILOVERS.labels("chat-proxy", "busy", "status_429")) >= 1
    assert counted(FAILOVERS.labels("chat-proxy", "failing", "status_5xx")) >= 1


async def test_every_attempt_failed_is_one_openai_error_naming_the_last_cause(
    tmp_path: Path, failing: Proc
) -> None:
    path = fleet(
        tmp_path,
        [upstream("f1", failing.url), upstream("f2", f"http://127.0.0.1:{free_port()}")],
        routing={"failures": 100, "attempts": 2},
    )
    async with serving(path) as app:
        result = await post(app, chat())
    assert result.status in (502, 503)
    error = json.loads(result.body)["error"]
    assert error["message"].startswith("2 attempts failed; the last: ")
    assert set(error) >= {"message", "type", "param", "code"}


async def test_a_4xx_caused_by_the_request_is_not_failed_over(
    tmp_path: Path, replicas: list[Proc]
) -> None:
    path = fleet(tmp_path, [upstream(f"r{n}", p.url) for n, p in enumerate(replicas)])
    before = sum(await streams_of(replicas))
    async with serving(path) as app:
        result = await post(app, chat(model="mock-fault:status=400"))
    assert result.status == 400
    assert sum(await streams_of(replicas)) - before == 1


async def test_a_stalled_first_token_fails_over_after_first_token_timeout(
    tmp_path: Path, replicas: list[Proc], thinking: Proc
) -> None:
    path = fleet(
        tmp_path,
        [
            upstream("thinking", thinking.url),
            upstream("live", replicas[0].url, priority=1),
        ],
        models={"mock-gpt": {"first_token_timeout": 0.3}},
    )
    async with serving(path, upstream_read_timeout=6.0) as app:
        started = time.perf_counter()
        result = await post(app, chat())
        took = time.perf_counter() - started
        other = await post(app, chat(model="mock-gpt-mini"))  # no first-token timeout
    assert result.status == 200 and text_of(result) == mock_text(10)
    assert result.headers["x-sluice-attempts"] == "2"
    assert 0.3 <= took < 1.5
    assert other.status == 200 and other.headers["x-sluice-attempts"] == "1"
    assert counted(FAILOVERS.labels("chat-proxy", "thinking", "first_token_timeout")) >= 1


async def test_caps_are_respected_and_a_full_fleet_is_a_503_server_full(
    tmp_path: Path, replicas: list[Proc]
) -> None:
    path = fleet(tmp_path, [upstream("one", replicas[0].url, max_streams=1)])
    slow = chat(model="mock-fault:delay=0.1")
    async with serving(path) as app:
        first = asyncio.ensure_future(post(app, slow))
        await asyncio.sleep(0.3)
        refused = await post(app, chat())
        done = await first
        after = await post(app, chat())
        assert (await asgi.request(app, "/readyz")).status == 200
    assert done.status == 200
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1"
    assert json.loads(refused.body)["error"]["code"] == "server_full"
    assert after.status == 200


async def test_readyz_is_503_only_when_every_endpoint_is_in_cooldown(tmp_path: Path) -> None:
    path = fleet(
        tmp_path,
        [upstream("d1", f"http://127.0.0.1:{free_port()}")],
        routing={"failures": 1, "cooldown": 30},
    )
    async with serving(path) as app:
        assert (await asgi.request(app, "/readyz")).status == 200
        failed = await post(app, chat())
        assert failed.status == 502
        cooling = await post(app, chat())
        ready = await asgi.request(app, "/readyz")
    assert cooling.status == 503
    assert json.loads(cooling.body)["error"]["code"] == "upstream_unavailable"
    assert 28 <= int(cooling.headers["retry-after"]) <= 30
    assert ready.status == 503
    assert "cooldown" in ready.text


async def test_early_headers_ping_while_the_model_thinks_and_an_early_failure_is_an_event(
    tmp_path: Path, thinking: Proc, failing: Proc
) -> None:
    path = fleet(
        tmp_path,
        [
            upstream("thinking", thinking.url, models=["mock-gpt"]),
            upstream("failing", failing.url, models=["broken"]),
        ],
        routing={"early_headers": True, "failures": 100},
    )
    async with serving(path, heartbeat_interval=0.5, upstream_read_timeout=6.0) as app:
        result = await post(app, chat())
        broken = await post(app, chat(model="broken"))
    assert result.status == 200
    pings = [t for t, c in zip(result.times, result.chunks, strict=True) if c == b": ping\n\n"]
    first_token = next(
        t for t, c in zip(result.times, result.chunks, strict=True) if b"content" in c
    )
    assert len(pings) >= 4 and all(t < first_token for t in pings)
    assert text_of(result) == mock_text(10)
    assert broken.status == 200  # the headers went first: the failure is the stream's end
    lines = [line for line in broken.text.split("\n") if line.startswith("data: ")]
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "upstream_503" and "503" in error["message"]


async def test_a_cut_stream_is_still_charged_and_the_log_says_estimate(
    tmp_path: Path, replicas: list[Proc]
) -> None:
    path = fleet(tmp_path, [upstream("r0", replicas[0].url)])
    label = ("chat-proxy", "other")
    prompt_before = counted(TOKENS.labels(*label, "prompt"))
    completion_before = counted(TOKENS.labels(*label, "completion"))
    long_prompt = "word " * 400  # 2,000 characters: about 500 tokens

    def payload(fault: str) -> bytes:
        message = {"role": "user", "content": long_prompt}
        body = {"model": f"mock-fault:{fault}", "messages": [message], "stream": True}
        return json.dumps(body).encode()

    with captured("sluice.access") as records:
        async with serving(path) as app:
            cut = await post(app, payload("tokens=200,delay=0.01"), leave_after=5)
            reset = await post(app, payload("reset_after=4"))
    assert cut.status == 200 and reset.status == 200
    prompt = counted(TOKENS.labels(*label, "prompt")) - prompt_before
    completion = counted(TOKENS.labels(*label, "completion")) - completion_before
    assert 2 * 450 <= prompt <= 2 * 560
    assert 6 <= completion <= 20
    lines = [r for r in records if getattr(r, "tokens_estimated", False)]
    assert len(lines) == 2


async def test_reasoning_and_tool_call_deltas_count_as_completion_tokens(
    tmp_path: Path, replicas: list[Proc]
) -> None:
    path = fleet(tmp_path, [upstream("r0", replicas[0].url)])
    label = ("chat-proxy", "other", "completion")
    async with serving(path) as app:
        for fault, expected in (("reasoning=5,no_usage=1", 15), ("tool_call=7,no_usage=1", 7)):
            before = counted(TOKENS.labels(*label))
            result = await post(app, chat(model=f"mock-fault:{fault}"))
            assert result.status == 200
            assert counted(TOKENS.labels(*label)) - before == expected, fault


async def test_an_early_failure_of_a_responses_stream_is_its_typed_error_event(
    tmp_path: Path, failing: Proc
) -> None:
    path = fleet(
        tmp_path,
        [upstream("failing", failing.url)],
        routing={"early_headers": True, "failures": 100},
    )
    payload = json.dumps({"model": "mock-gpt", "input": "hi", "stream": True}).encode()
    async with serving(path) as app:
        result = await asgi.request(
            app, "/v1/responses", method="POST", headers=[AUTH, JSON], body=payload
        )
    assert result.status == 200
    assert result.text.startswith("event: error\ndata: ")
    event = json.loads(result.text.split("data: ", 1)[1])
    assert event["type"] == "error" and event["code"] == "upstream_503"
    assert "503" in event["message"]


async def test_a_refused_connection_asks_dns_again_at_once(
    tmp_path: Path, replicas: list[Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pod was replaced: the name now stands for a new address, long before the next
    # resolve_interval. The refused connection asks again; the next request gets the new one.
    answers = {"pod.test": ["127.0.0.4"]}  # nothing listens there
    asked: list[float] = []

    async def stub(host: str, port: int) -> list[str]:
        asked.append(time.monotonic())
        return answers[host]

    monkeypatch.setattr(endpoints_module, "resolve", stub)
    entry = upstream("vllm", f"http://pod.test:{replicas[1].port}")
    path = fleet(tmp_path, [entry], routing={"resolve_interval": 300, "failures": 100})
    async with serving(path) as app:
        answers["pod.test"] = ["127.0.0.2"]
        refused = await post(app, chat())
        assert refused.status == 502  # the old address: refused, nothing else to try
        deadline = time.monotonic() + 3
        while len(asked) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        again = await post(app, chat())
        hammered = [await post(app, chat(model="mock-gpt-mini")) for _ in range(3)]
    assert len(asked) == 2  # at start, and once after the refusal (not once per request)
    assert again.status == 200 and text_of(again) == mock_text(10)
    assert all(r.status == 200 for r in hammered)
