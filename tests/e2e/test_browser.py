"""The seed's browser snippet, in a real headless Chromium, through the front door."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.procs import Proc

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
  const seen = {update: [], any: 0};
  const es = new EventSource(url);
  es.onmessage = (e) => console.log(e.data);
  es.addEventListener("update", (e) => {
    console.log("Update:", e.data);
    seen.update.push(e.data);
    if (seen.update.length >= 2) { es.close(); resolve(seen); }
  });
  for (const type of ["update", "alert", "info"]) es.addEventListener(type, () => seen.any++);
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
    assert seen["any"] >= 2
    for data in seen["update"]:
        assert set(json.loads(data)) == {"time", "value"}
    page.close()
