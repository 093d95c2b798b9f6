"""The seed's browser snippet, in a real headless Chromium, through the front door."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from sluice_services.mock_upstream.routes import mock_text
from tests.chat_proxy.conftest import UPSTREAM_KEY
from tests.support.procs import Proc, running, start_nginx, start_service, worker_pids

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# The seed notes' snippet, verbatim but for the URL, resolving once two updates arrived.
SEED_SNIPPET = """
(url) => new Promise((resolve, reject) => {
  const seen = {update: []};
  const es = new EventSource(url);
  es.onmessage = (e) => console.log(e.data);
  es.addEventListener("update", (e) => {
    console.log("Update:", e.data);
    seen.update.push(e.data);
    if (seen.update.length >= 2) { es.close(); resolve(seen); }
  });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) reject(new Error("closed")); };
  setTimeout(() => reject(new Error("no update event in 10 s")), 10000);
})
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_seed_event_source_snippet_receives_dummy_events(
    browser: Browser, front_door: Proc
) -> None:
    page = browser.new_page()
    page.goto(f"{front_door.url}/healthz")
    seen: dict[str, Any] = page.evaluate(SEED_SNIPPET, f"{front_door.url}/dummy-events")
    assert len(seen["update"]) == 2
    for data in seen["update"]:
        assert set(json.loads(data)) == {"time", "value"}
    page.close()


# The README's browser recipe when the route needs a key: fetch a stream token (the cookie
# is HttpOnly: page scripts never see it), then a plain EventSource carries it.
TOKEN_THEN_EVENT_SOURCE = """
async ([key, path]) => {
  const issued = await fetch("/auth/stream-token", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    body: JSON.stringify({path}),
  });
  const cookieVisible = document.cookie.includes("sluice_stream_token");
  const events = await new Promise((resolve, reject) => {
    const got = [];
    const es = new EventSource(path);
    for (const type of ["update", "alert", "info"]) {
      es.addEventListener(type, (e) => {
        got.push(e.data);
        if (got.length === 3) { es.close(); resolve(got); }
      });
    }
    es.onerror = () => { es.close(); reject(new Error("EventSource refused")); };
  });
  return {status: issued.status, cookieVisible, events};
}
"""


def test_browser_streams_a_protected_route_with_a_stream_token_cookie(
    browser: Browser, secured: tuple[Proc, Proc]
) -> None:
    from tests.e2e.conftest import K_BROWSER

    _, nginx = secured
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{nginx.url}/healthz")
    refused = page.evaluate(
        """() => new Promise((resolve) => {
             const es = new EventSource("/dummy-events");
             es.onerror = () => { resolve(es.readyState); es.close(); };
           })"""
    )
    result = page.evaluate(TOKEN_THEN_EVENT_SOURCE, [K_BROWSER, "/dummy-events"])
    cookies = context.cookies()
    context.close()
    assert refused == 2  # EventSource.CLOSED: a 401 is final for EventSource
    assert result["status"] == 200
    assert result["cookieVisible"] is False  # HttpOnly
    assert len(result["events"]) == 3
    (cookie,) = [c for c in cookies if c["name"] == "sluice_stream_token"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dummy-events"


# The README's progress recipe in a browser: a token for the job's events, then EventSource.
WATCH_JOB = """
async ([key, eventsUrl]) => {
  await fetch("/auth/stream-token", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    body: JSON.stringify({path: eventsUrl}),
  });
  return await new Promise((resolve, reject) => {
    const percents = [];
    const es = new EventSource(eventsUrl);
    es.addEventListener("progress", (e) => percents.push(JSON.parse(e.data).percent));
    es.addEventListener("complete", (e) => {
      es.close(); resolve({percents, result: JSON.parse(e.data).result});
    });
    es.addEventListener("failed", (e) => { es.close(); reject(new Error(e.data)); });
    setTimeout(() => reject(new Error("no complete event in 15 s")), 15000);
  });
}
"""


def test_browser_watches_a_job_with_event_source(browser: Browser, log_dir: Path) -> None:
    key = "sk-e2e-browser-progress-000000001"
    progress = start_service("progress", log_dir, {"SLUICE_API_KEYS": key}, workers=1)
    nginx = start_nginx({"progress": f"127.0.0.1:{progress.port}"}, log_dir)
    with running(nginx, progress):
        job = httpx.post(
            f"{nginx.url}/jobs",
            headers={"Authorization": f"Bearer {key}"},
            json={"kind": "simulate", "params": {"steps": 4, "delay": 0.1}},
        ).json()
        page = browser.new_page()
        page.goto(f"{nginx.url}/healthz")
        seen = page.evaluate(WATCH_JOB, [key, job["events_url"]])
        page.close()
    assert seen["percents"] == [25.0, 50.0, 75.0, 100.0]
    assert seen["result"] == {"steps": 4}


# The README's recipe for streams that outlive the token's TTL: a drain's reconnect hint
# comes retry ms before EventSource reconnects; the page fetches a fresh cookie meanwhile.
LONG_STREAM = """
async ([key, renew]) => {
  const token = () => fetch("/auth/stream-token", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    body: JSON.stringify({path: "/dummy-events"}),
  });
  await token();
  window.seen = {events: 0, hints: 0, opens: 0};
  const es = window.es = new EventSource("/dummy-events");
  for (const type of ["update", "alert", "info"]) {
    es.addEventListener(type, () => { window.seen.events++; });
  }
  es.addEventListener("reconnect", () => { window.seen.hints++; if (renew) token(); });
  es.onopen = () => { window.seen.opens++; };
}
"""
STATE = "() => ({...window.seen, state: window.es.readyState})"


def test_browser_stream_outlives_its_token_through_a_rolling_restart(
    browser: Browser, log_dir: Path
) -> None:
    key = "sk-e2e-browser-restart-0000000001"
    env = {
        "SLUICE_API_KEYS": key,
        "SLUICE_PUBLIC_ROUTES": "",
        "SLUICE_STREAM_TOKEN_TTL": "2",
        "SLUICE_DRAIN_WINDOW": "1",
        "SLUICE_RECONNECT_RETRY_MS": "500",
        "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.2",
    }
    demo = start_service("demo", log_dir, env, workers=1)
    nginx = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, log_dir)
    with running(nginx, demo):
        pages = {}
        for renew in (True, False):
            page = browser.new_context().new_page()  # a cookie jar each
            page.goto(f"{nginx.url}/healthz")
            page.evaluate(LONG_STREAM, [key, renew])
            pages[renew] = page
        time.sleep(3)  # past the token's TTL: the cookie each stream renewed has expired
        before = {renew: page.evaluate(STATE) for renew, page in pages.items()}
        (old,) = worker_pids(demo)
        demo.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while old in worker_pids(demo) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)
        after = {renew: page.evaluate(STATE) for renew, page in pages.items()}
        for page in pages.values():
            page.context.close()
    assert all(b["opens"] == 1 and b["events"] > 5 and b["state"] == 1 for b in before.values())
    renewed, stale = after[True], after[False]
    assert renewed["hints"] >= 1 and renewed["opens"] >= 2
    assert renewed["state"] == 1  # OPEN: streaming from the new worker
    assert renewed["events"] > before[True]["events"] + 3
    assert stale["hints"] >= 1
    assert stale["state"] == 2  # CLOSED: its reconnect had no valid cookie (401 is final)


# An EventSource on /chat-stream that never closes: it counts what a reconnect would redo.
WATCH_CHAT = """
(url) => {
  window.chat = {opens: 0, deltas: 0, done: 0, failed: 0, errors: [], text: "", ids: []};
  const es = window.chatEs = new EventSource(url);
  es.onopen = () => { window.chat.opens++; };
  es.onmessage = (e) => {
    window.chat.deltas++;
    window.chat.ids.push(e.lastEventId);
    window.chat.text += JSON.parse(e.data).delta;
  };
  es.addEventListener("done", () => { window.chat.done++; });
  es.addEventListener("failed", () => { window.chat.failed++; });
  es.onerror = () => { window.chat.errors.push(es.readyState); };
}
"""
CHAT_STATE = "() => ({...window.chat, state: window.chatEs.readyState})"


@pytest.fixture(scope="module")
def chat_front_door(log_dir: Path, mock_upstream: Proc) -> Iterator[Proc]:
    env = {
        "SLUICE_UPSTREAM_BASE_URL": f"{mock_upstream.url}/v1",
        "SLUICE_UPSTREAM_API_KEY": UPSTREAM_KEY,
    }
    chat = start_service("chat-proxy", log_dir, env, workers=1)
    nginx = start_nginx({"chat-proxy": f"127.0.0.1:{chat.port}"}, log_dir)
    with running(nginx, chat):
        yield nginx


def upstream_requests(mock_upstream: Proc) -> int:
    count: int = httpx.get(f"{mock_upstream.url}/mock/stats").json()["requests"]
    return count


def test_event_source_on_chat_stream_gets_one_completion_and_no_rerun(
    browser: Browser, chat_front_door: Proc, mock_upstream: Proc
) -> None:
    # Regression: the stream ended after `done`, EventSource reconnected 3 s later, and every
    # reconnect was a new completion (3 opens, 48 deltas in 7 s). Its reconnect now carries
    # Last-Event-ID and gets 204, which closes an EventSource for good.
    before = upstream_requests(mock_upstream)
    page = browser.new_page()
    page.goto(f"{chat_front_door.url}/healthz")
    page.evaluate(WATCH_CHAT, "/chat-stream?prompt=Tell+a+story&format=sse")
    deadline = time.monotonic() + 10
    while page.evaluate(CHAT_STATE)["done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    done_at = time.monotonic()
    while page.evaluate(CHAT_STATE)["state"] != 2 and time.monotonic() < done_at + 8:
        time.sleep(0.1)  # CLOSED: the reconnect (after Chromium's 3 s) was answered 204
    closed_after = time.monotonic() - done_at
    time.sleep(1)  # and nothing after it
    seen = page.evaluate(CHAT_STATE)
    page.close()
    assert seen["done"] == 1
    assert seen["opens"] == 1
    assert seen["deltas"] == 20
    assert seen["text"] == mock_text(20)
    assert seen["ids"] == [str(n) for n in range(1, 21)]
    assert seen["state"] == 2, f"still reconnecting {closed_after:.1f} s after done"
    # EventSource's own `error`: the end of the answer (CONNECTING: it will reconnect), then
    # the 204 to that reconnect (CLOSED, for good).
    assert seen["errors"] == [0, 2]
    assert seen["failed"] == 0
    assert upstream_requests(mock_upstream) == before + 1  # one completion, no re-run


def test_readme_chat_stream_snippet_closes_on_done(
    browser: Browser, chat_front_door: Proc, mock_upstream: Proc
) -> None:
    from tests.e2e.test_make_run import readme_block

    snippet = readme_block("## chat-proxy", "js")
    assert 'es.addEventListener("done", () => es.close());' in snippet
    before = upstream_requests(mock_upstream)
    page = browser.new_page()
    page.goto(f"{chat_front_door.url}/healthz")
    # As pasted into a page's script: `output` is the page's element, here a stand-in.
    page.evaluate(
        "(code) => { window.output = {textContent: ''}; (0, eval)(code + ';readmeEs = es'); }",
        snippet,
    )
    deadline = time.monotonic() + 10
    while page.evaluate("() => window.readmeEs.readyState") != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    text = page.evaluate("() => window.output.textContent")
    page.close()
    assert text == mock_text(20)
    assert upstream_requests(mock_upstream) == before + 1
