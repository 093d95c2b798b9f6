"""Resumable chat answers for real: chat-proxy under gunicorn (2 workers) with Redis, behind
the shipped nginx; a rolling restart (SIGHUP) mid-answer, the answer resumed on a new worker
while the old one finishes generating it; a browser's EventSource reconnecting by itself."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from sluice_services.mock_upstream.text import mock_text
from tests.chat_proxy.conftest import UPSTREAM_KEY
from tests.e2e.test_browser import browser  # noqa: F401 (the module's Chromium)
from tests.support.procs import Proc, running, start_nginx, start_service, worker_pids

KEY = "sk-e2e-resume-00000000000000000001"
AUTH = {"Authorization": f"Bearer {KEY}"}
WINDOW = 10
# The browser's answer: 30 s at 0.02 s a token, past any start-up of new workers plus WINDOW.
BROWSER_TOKENS = 1500


@pytest.fixture
def stack(log_dir: Path, mock_upstream: Proc, redis_server: Proc) -> Iterator[tuple[Proc, Proc]]:
    env = {
        "SLUICE_API_KEYS": KEY,
        "SLUICE_UPSTREAM_BASE_URL": f"{mock_upstream.url}/v1",
        "SLUICE_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "SLUICE_REDIS_URL": redis_server.extra["url"],
        "SLUICE_DRAIN_WINDOW": str(WINDOW),
        "SLUICE_RECONNECT_RETRY_MS": "300",
    }
    proxy = start_service("chat-proxy", log_dir, env, workers=2)
    nginx = start_nginx({"chat-proxy": f"127.0.0.1:{proxy.port}"}, log_dir)
    with running(nginx, proxy):
        yield proxy, nginx


def sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = value


def content(datas: list[str]) -> str:
    return "".join(
        json.loads(d)["choices"][0]["delta"].get("content") or ""
        for d in datas
        if d.startswith('{"id"')
    )


def pid_of(proxy: Proc, request_id: str) -> int:
    """The worker that served a request, from its access log line."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in proxy.log().splitlines():
            if f'"request_id": "{request_id}"' in line and '"msg": "request"' in line:
                return int(json.loads(line)["pid"])
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {request_id}")


def test_a_rolling_restart_mid_answer_resumes_on_a_new_worker_and_loses_no_token(
    stack: tuple[Proc, Proc],
) -> None:
    proxy, nginx = stack
    old = set(worker_pids(proxy))
    body = {
        "model": "mock-fault:tokens=300,delay=0.01",
        "stream": True,
        "messages": [{"role": "user", "content": "a long answer"}],
    }
    seen: list[tuple[int, str]] = []
    headers = {**AUTH, "X-Sluice-Resumable": "1", "X-Request-ID": "resume-e2e-start"}
    with httpx.stream(
        "POST", f"{nginx.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        path = response.headers["x-sluice-resume"]
        for event in sse(response.iter_lines()):
            seen.append((int(event["id"]), event["data"]))
            if len(seen) == 10:
                break  # the client drops (a phone changing networks)
    proxy.popen.send_signal(signal.SIGHUP)  # a rolling restart, mid-answer
    deadline = time.monotonic() + 30
    while len(set(worker_pids(proxy)) - old) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    new = set(worker_pids(proxy)) - old
    assert len(new) == 2, "the replacements did not start"
    time.sleep(2)  # past the hand-over's lame-duck second: the old workers accept no more
    resumes = 0
    while seen[-1][1] != "[DONE]" and resumes < 10:
        resumes += 1
        rid = f"resume-e2e-{resumes}"
        headers = {**AUTH, "Last-Event-ID": str(seen[-1][0]), "X-Request-ID": rid}
        with httpx.stream("GET", f"{nginx.url}{path}", headers=headers, timeout=30) as part:
            assert part.status_code == 200, part.read()
            for event in sse(part.iter_lines()):
                if "id" in event:
                    seen.append((int(event["id"]), event["data"]))
        assert pid_of(proxy, rid) in new  # a new worker served it
    assert seen[-1][1] == "[DONE]"
    assert [n for n, _ in seen] == list(range(1, len(seen) + 1))  # every event once, in order
    assert content([d for _, d in seen]) == mock_text(300)
    assert pid_of(proxy, "resume-e2e-start") in old
    # The old workers finished the generation, then left (within the window: a clean drain).
    deadline = time.monotonic() + WINDOW + 10
    while old & set(worker_pids(proxy)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not old & set(worker_pids(proxy))
    assert '"clean": true' in proxy.log()


def test_two_replicas_sharing_redis_resume_and_stop_each_others_answers(
    log_dir: Path, mock_upstream: Proc, redis_server: Proc
) -> None:
    """Two chat-proxy services (each gunicorn, its own workers), one Redis: an answer started
    on one is resumed through the other, and a DELETE there stops it where it runs, its
    upstream request cancelled within 100 ms."""
    env = {
        "SLUICE_API_KEYS": KEY,
        "SLUICE_UPSTREAM_BASE_URL": f"{mock_upstream.url}/v1",
        "SLUICE_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "SLUICE_REDIS_URL": redis_server.extra["url"],
    }
    one = start_service("chat-proxy", log_dir, env, workers=1)
    two = start_service("chat-proxy", log_dir, env, workers=1)
    with running(one, two):
        body = {
            "model": "mock-fault:tokens=500,delay=0.02",
            "stream": True,
            "messages": [{"role": "user", "content": "across replicas"}],
        }
        rid = f"resume-replicas-{time.time_ns()}"
        seen: list[tuple[int, str]] = []
        headers = {**AUTH, "X-Sluice-Resumable": "1", "X-Request-ID": rid}
        with httpx.stream(
            "POST", f"{one.url}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            path = response.headers["x-sluice-resume"]
            for event in sse(response.iter_lines()):
                seen.append((int(event["id"]), event["data"]))
                if len(seen) == 5:
                    break
        headers = {**AUTH, "Last-Event-ID": str(seen[-1][0])}
        with httpx.stream("GET", f"{two.url}{path}", headers=headers, timeout=30) as part:
            for event in sse(part.iter_lines()):
                seen.append((int(event["id"]), event["data"]))
                if len(seen) == 25:
                    break
        assert [n for n, _ in seen] == list(range(1, 26))
        asked = time.time()
        stopped = httpx.delete(f"{two.url}{path.removesuffix('/events')}", headers=AUTH)
        assert stopped.status_code == 200 and stopped.json()["status"] == "ended", stopped.text
        seen_upstream = httpx.get(f"{mock_upstream.url}/mock/requests/{rid}").json()
        assert seen_upstream["end"] == "client_disconnect"
        assert seen_upstream["ended_at"] - asked < 0.1, seen_upstream["ended_at"] - asked
        rest = httpx.get(f"{two.url}{path}", headers={**AUTH, "Last-Event-ID": "25"}).text
        last = [e["data"] for e in sse(iter(rest.split("\n"))) if "data" in e][-1]
        assert json.loads(last)["error"]["code"] == "answer_cancelled"


# A browser: a stream token for the answer's resume path, then an EventSource on it, which
# reconnects by itself (Last-Event-ID) when a rolling restart drains its stream.
WATCH_ANSWER = """
async ([key, path]) => {
  await fetch("/auth/stream-token", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    body: JSON.stringify({path}),
  });
  window.answer = {ids: [], datas: [], opens: 0, hints: 0, closed: false};
  const es = window.answerEs = new EventSource(path);
  es.onopen = () => { window.answer.opens++; };
  es.addEventListener("reconnect", () => { window.answer.hints++; });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) window.answer.closed = true; };
  es.onmessage = (e) => {
    window.answer.ids.push(Number(e.lastEventId));
    window.answer.datas.push(e.data);
    if (e.data === "[DONE]") { es.close(); window.answer.closed = true; }
  };
}
"""


def test_an_event_source_resumes_an_answer_by_itself_through_a_rolling_restart(
    stack: tuple[Proc, Proc],
    log_dir: Path,
    mock_upstream: Proc,
    redis_server: Proc,
    browser: Browser,  # noqa: F811
) -> None:
    """The page reads through nginx from the stack's replica, which a rolling restart drains;
    the answer is generated on another replica sharing Redis, so it runs on, long past the
    drain window (a drain's hint comes at a random moment in the window: an answer generated
    on the drained replica would have to end within it, and might end before the hint)."""
    proxy, nginx = stack
    env = {
        "SLUICE_API_KEYS": KEY,
        "SLUICE_UPSTREAM_BASE_URL": f"{mock_upstream.url}/v1",
        "SLUICE_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "SLUICE_REDIS_URL": redis_server.extra["url"],
    }
    generator = start_service("chat-proxy", log_dir, env, workers=1)
    body = {
        "model": f"mock-fault:tokens={BROWSER_TOKENS},delay=0.02",
        "stream": True,
        "messages": [{"role": "user", "content": "for a browser"}],
    }
    with running(generator):
        with httpx.stream(
            "POST",
            f"{generator.url}/v1/chat/completions",
            json=body,
            headers={**AUTH, "X-Sluice-Resumable": "1"},
            timeout=30,
        ) as started:
            path = started.headers["x-sluice-resume"]  # (the POST's own reader leaves at once)
        page = browser.new_context().new_page()
        try:
            page.goto(f"{nginx.url}/healthz")
            page.evaluate(WATCH_ANSWER, [KEY, path])
            deadline = time.monotonic() + 20
            state: dict[str, Any] = page.evaluate("() => window.answer")
            while len(state["ids"]) < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
                state = page.evaluate("() => window.answer")
            assert len(state["ids"]) >= 20 and not state["closed"], state["ids"][-5:]
            proxy.popen.send_signal(signal.SIGHUP)  # the page's stream is drained: a hint
            deadline = time.monotonic() + 90
            while not state["closed"] and time.monotonic() < deadline:
                time.sleep(0.2)
                state = page.evaluate("() => window.answer")
        finally:
            page.context.close()
    summary = {k: v for k, v in state.items() if k not in ("ids", "datas")}
    assert state["closed"], summary
    assert state["hints"] >= 1 and state["opens"] >= 2, summary  # cut, and reconnected itself
    assert state["ids"] == list(range(1, len(state["ids"]) + 1))  # no token twice, none lost
    assert content(state["datas"]) == mock_text(BROWSER_TOKENS)
