"""chat-proxy through nginx with real clients: the openai SDK, curl, and a client that leaves."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sluice_services.mock_upstream.routes import mock_text
from tests.chat_proxy.conftest import CALLER_KEY, UPSTREAM_KEY
from tests.support.metrics import value, wait_for
from tests.support.procs import Proc, running, start_nginx, start_service


@pytest.fixture(scope="module")
def chat_stack(log_dir: Path, mock_upstream: Proc) -> Iterator[tuple[Proc, Proc]]:
    env = {
        "SLUICE_API_KEYS": CALLER_KEY,
        "SLUICE_UPSTREAM_BASE_URL": f"{mock_upstream.url}/v1",
        "SLUICE_UPSTREAM_API_KEY": UPSTREAM_KEY,
    }
    chat = start_service("chat-proxy", log_dir, env, workers=2)
    nginx = start_nginx({"chat-proxy": f"127.0.0.1:{chat.port}"}, log_dir)
    with running(nginx, chat):
        yield chat, nginx


def test_openai_sdk_sync_stream_and_non_stream(chat_stack: tuple[Proc, Proc]) -> None:
    _, nginx = chat_stack
    client = openai.OpenAI(base_url=f"{nginx.url}/v1", api_key=CALLER_KEY, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell a story"}]
    stream = client.chat.completions.create(
        model="mock-gpt",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mock_text(20)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    whole = client.chat.completions.create(model="mock-gpt", messages=messages)
    assert whole.choices[0].message.content == mock_text(20)
    assert [m.id for m in client.models.list()] == ["mock-gpt", "mock-gpt-mini"]


def test_openai_sdk_async_stream_and_errors(chat_stack: tuple[Proc, Proc]) -> None:
    _, nginx = chat_stack

    async def main() -> tuple[str, str, type[Exception], type[Exception]]:
        # Closed on the way out: an unclosed client is closed by the garbage collector
        # later, on a loop that is gone, and that error surfaced in whatever test ran then.
        async with (
            openai.AsyncOpenAI(
                base_url=f"{nginx.url}/v1", api_key=CALLER_KEY, max_retries=0
            ) as client,
            openai.AsyncOpenAI(
                base_url=f"{nginx.url}/v1", api_key="sk-nope", max_retries=0
            ) as bad_key,
        ):
            messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
            stream = await client.chat.completions.create(
                model="mock-gpt",
                messages=messages,
                stream=True,
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            whole = await client.chat.completions.create(model="mock-gpt", messages=messages)
            try:
                await client.chat.completions.create(
                    model="mock-fault:status=503", messages=messages
                )
            except openai.APIStatusError as exc:
                before_first_byte = type(exc)
            try:
                failing = await client.chat.completions.create(
                    model="mock-fault:error_after=2", messages=messages, stream=True
                )
                async for _ in failing:
                    pass
            except openai.APIError as exc:
                mid_stream = type(exc)
            with pytest.raises(openai.AuthenticationError):
                await bad_key.chat.completions.create(model="mock-gpt", messages=messages)
        return text, whole.choices[0].message.content or "", before_first_byte, mid_stream

    text, whole, before, mid = asyncio.run(main())
    assert text == mock_text(20)
    assert whole == mock_text(20)
    assert before is openai.InternalServerError  # our 502
    assert issubclass(mid, openai.APIError)


def test_curl_streams_tokens_as_they_come(chat_stack: tuple[Proc, Proc]) -> None:
    _, nginx = chat_stack
    request = json.dumps(
        {
            "model": "mock-fault:delay=0.05,tokens=10",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    proc = subprocess.Popen(
        [
            "curl",
            "-sN",
            f"{nginx.url}/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {CALLER_KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            request,
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    started = time.perf_counter()
    arrivals = []
    for line in proc.stdout:
        if line.startswith(b"data: "):
            arrivals.append(time.perf_counter() - started)
    assert proc.wait(10) == 0
    assert len(arrivals) == 13  # role, 10 tokens, stop, [DONE]
    assert arrivals[-1] - arrivals[1] > 0.35  # spread as the upstream sent them, not at once
    seed = subprocess.run(
        ["curl", "-sN", f"{nginx.url}/chat-stream?prompt=Tell+a+story"],
        capture_output=True,
        check=True,
    )
    assert seed.stdout.decode() == mock_text(20) + "\n"  # the text form ends its line


def test_client_disconnect_cancels_the_upstream_at_once(
    chat_stack: tuple[Proc, Proc], mock_upstream: Proc
) -> None:
    _, nginx = chat_stack
    gaps = []
    for i in range(5):
        rid = f"cancel-{i}-{time.time_ns()}"
        request = {
            "model": "mock-fault:delay=0.05,tokens=200",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with httpx.stream(
            "POST",
            f"{nginx.url}/v1/chat/completions",
            json=request,
            headers={"Authorization": f"Bearer {CALLER_KEY}", "X-Request-ID": rid},
            timeout=10,
        ) as response:
            chunks = response.iter_raw()
            for _ in range(3):
                next(chunks)
        left = time.time()

        def gone(rid: str = rid) -> bool:
            seen = httpx.get(f"{mock_upstream.url}/mock/requests/{rid}").json()
            return bool(seen.get("end") == "client_disconnect")

        wait_for(gone, 2, what="upstream saw the client go")
        seen = httpx.get(f"{mock_upstream.url}/mock/requests/{rid}").json()
        gaps.append(seen["ended_at"] - left)
        assert seen["tokens_sent"] < 20
    assert max(gaps) < 0.1, gaps


def test_chat_metrics_after_streams(chat_stack: tuple[Proc, Proc]) -> None:
    chat, nginx = chat_stack
    client = openai.OpenAI(base_url=f"{nginx.url}/v1", api_key=CALLER_KEY, max_retries=0)
    before = value(chat.url, "sluice_chat_time_to_first_token_seconds_count", model="mock-gpt")
    for _ in range(3):
        list(
            client.chat.completions.create(
                model="mock-gpt",
                stream=True,
                messages=[{"role": "user", "content": "a b c"}],
            )
        )
    wait_for(
        lambda: (
            value(chat.url, "sluice_chat_time_to_first_token_seconds_count", model="mock-gpt")
            == before + 3
        ),
        3,
    )
    assert value(chat.url, "sluice_chat_inter_token_latency_seconds_count", model="mock-gpt") >= 57
    assert value(chat.url, "sluice_chat_tokens_total", model="mock-gpt", kind="completion") >= 60
    assert value(chat.url, "sluice_chat_tokens_total", model="mock-gpt", kind="prompt") >= 9
    assert value(chat.url, "sluice_upstream_requests_total", status="200") >= 3
    assert value(chat.url, "sluice_streams_active", route="/v1/chat/completions") == 0
    log = chat.log()
    assert '"tokens_completion": 20' in log
    assert CALLER_KEY not in log
    assert UPSTREAM_KEY not in log
