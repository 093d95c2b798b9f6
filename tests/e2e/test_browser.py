"""The seed's browser snippet, in a real headless Chromium, through the front door."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.procs import Proc, running, start_nginx, start_service

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
