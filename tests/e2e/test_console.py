"""The console (nginx/console/) in headless Chromium against make run's stack, driven as a
user drives it: sign in with the keyboard, stream an answer, stop it, read the errors the
proxy reports; and the front door's policy for its files. Screenshots of each page go to
tests/output/console/ (kept as CI artefacts)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ElementHandle, Page, Route

from sluice.auth import COOKIE_NAME
from sluice_services.mock_upstream.text import mock_text
from tests.e2e.test_browser import browser  # noqa: F401 (the module's Chromium)
from tests.support.firefox import firefox
from tests.support.paths import ROOT
from tests.support.procs import LocalStack, start_local_stack

SCREENSHOTS = ROOT / "tests" / "output" / "console"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[LocalStack]:
    local = start_local_stack(tmp_path_factory.mktemp("console-run"), log_dir)
    try:
        yield local
    finally:
        local.stop()


def tear_down_connections(stack: LocalStack) -> None:
    """Every connection to the stack's nginx torn down (``ss -K``), as a network change
    tears down a tab's: the page's, then, since no other client holds one."""
    port = stack.base.rsplit(":", 1)[1]
    killed = subprocess.run(
        ["ss", "-K", "dst", "127.0.0.1", "dport", "=", port],
        check=True,
        timeout=10,
        capture_output=True,
        text=True,
    )
    assert "ESTAB" in killed.stdout, killed.stdout + killed.stderr  # a socket was torn down


def raw_get(base: str, path: str) -> tuple[int, str]:
    """One GET with its path exactly as given; the status and the whole answer."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    text = data.decode(errors="replace")
    return int(text.split(" ", 2)[1]), text


def mock_request(stack: LocalStack, request_id: str | None, timeout: float) -> dict[str, Any]:
    """The mock upstream's record of one request, once it ended (or what it has by then)."""
    mock = f"http://127.0.0.1:{stack.env['SLUICE_DEV_MOCK_UPSTREAM_PORT']}"
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = httpx.get(f"{mock}/mock/requests/{request_id}", timeout=5)
        seen = answer.json() if answer.status_code == 200 else {}
        if seen.get("end"):
            break
        time.sleep(0.05)
    return seen


class Console:
    """A page on the console, every request it makes recorded."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.goto(f"{base}/console/")

    def sign_in(self, key: str) -> None:
        # The key field has the focus, once the page's script ran (a user sees it there).
        self.page.wait_for_function("document.activeElement?.id === 'key'")
        self.page.keyboard.type(key)
        self.page.keyboard.press("Enter")

    def signed_in(self, key: str) -> None:
        """Signed in, on the page the address names (Chat by default)."""
        self.sign_in(key)
        self.page.wait_for_selector("#sign-in[hidden]", state="attached")

    def wait_tokens(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while int(self.text("#tokens")) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(self.text("#tokens")) >= count, self.text("#tokens")

    def ask(self, model: str, prompt: str) -> None:
        self.page.fill("#model", model)
        self.page.fill("#prompt", prompt)
        self.page.click("#send")

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def wait_status(self, *wanted: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.text("#status")
            if status in wanted:
                return status
            time.sleep(0.05)
        raise AssertionError(f"status {status!r}, not {wanted}")

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def console(browser: Browser, stack: LocalStack) -> Iterator[Console]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield Console(context.new_page(), stack.base)
    finally:
        context.close()


def test_the_console_is_served_with_a_strict_policy_and_nothing_else_is(
    stack: LocalStack,
) -> None:
    page = httpx.get(f"{stack.base}/console/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-request-id"]
    assert "<script" not in page.text.replace('<script type="module" src="console.js">', "")
    script = httpx.get(f"{stack.base}/console/console.js", timeout=10)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("application/javascript")
    assert "localStorage" not in script.text and "sessionStorage" not in script.text
    bare = httpx.get(f"{stack.base}/console", timeout=10)
    assert bare.status_code == 301 and bare.headers["location"] == "/console/"  # relative
    # Nothing outside the console's folder, however the path is spelled (sent as written:
    # an HTTP client library would take the dot segments out itself).
    for path in (
        "/console/../templates/sluice.conf.template",
        "/console/%2e%2e/templates/sluice.conf.template",
        "/console/..%2ftemplates/sluice.conf.template",
        "/console/%2e%2e%2ftemplates%2fsluice.conf.template",
        "/console../templates/sluice.conf.template",
        "/console/../../nginx/templates/sluice.conf.template",
        "/console/kustomization.yaml",
    ):
        status, text = raw_get(stack.base, path)
        assert status in (400, 404), (path, status)
        assert "upstream sluice_" not in text and "server {" not in text, path
    posted = httpx.post(f"{stack.base}/console/", content=b"x", timeout=10)
    assert posted.status_code == 405
    assert posted.json()["error"]["code"] == "method_not_allowed"


def test_sign_in_stream_an_answer_and_keep_the_key_in_the_tabs_memory_only(
    console: Console, stack: LocalStack
) -> None:
    assert console.page.is_hidden("#nav") and console.page.is_hidden("#sign-out")
    assert console.page.get_attribute("#key", "type") == "text"  # no password to save
    console.shot("sign-in")
    console.signed_in(stack.key)
    assert console.page.input_value("#model")  # picked from /v1/models
    console.ask("mock-fault:tokens=40,delay=0.01", "Say something")
    assert console.wait_status("done") == "done"
    assert console.text("#answer") == mock_text(40)
    assert console.text("#tokens") == "40"
    assert console.text("#ttft").endswith(" ms")
    assert float(console.text("#rate")) > 0
    assert console.text("#chat-error") == ""
    console.shot("chat")
    kept: dict[str, Any] = console.page.evaluate(
        "() => ({local: JSON.stringify(localStorage), session: JSON.stringify(sessionStorage),"
        " cookie: document.cookie, url: location.href})"
    )
    assert all(stack.key not in value for value in kept.values()), kept
    assert all(url.startswith(f"{stack.base}/") for url in console.requests), console.requests
    # A reload forgets the key: back to sign-in.
    console.page.reload()
    console.page.wait_for_selector("#sign-in:not([hidden])")
    assert console.page.is_hidden("#chat")


def test_stop_cancels_the_upstream_request(console: Console, stack: LocalStack) -> None:
    console.signed_in(stack.key)
    console.ask("mock-fault:tokens=2000,delay=0.02", "A long answer")
    console.wait_tokens(10)
    request_id = console.page.get_attribute("#answer", "data-request-id")
    console.page.click("#stop")
    stopped = time.time()
    assert console.wait_status("stopped") == "stopped"
    seen = mock_request(stack, request_id, timeout=10)
    assert seen["end"] == "client_disconnect", seen
    assert seen["ended_at"] - stopped < 3.0, seen["ended_at"] - stopped  # (two processes' clocks)
    tokens = console.text("#tokens")
    time.sleep(0.5)
    assert console.text("#tokens") == tokens  # nothing more arrived
    assert not console.page.is_disabled("#send")


def test_stop_before_the_first_token_still_stops_the_answer(
    console: Console, stack: LocalStack
) -> None:
    """Stop while the model thinks, before any header says where a resumable answer runs:
    the answer does not run on unread (the proxy cancels it with its request)."""
    console.signed_in(stack.key)
    console.ask("mock-fault:first_token_delay=1.5,tokens=2000,delay=0.02", "think first")
    request_id = console.page.get_attribute("#answer", "data-request-id")
    console.page.click("#stop")
    assert console.text("#status") in ("stopping", "stopped")
    assert console.wait_status("stopped", timeout=15) == "stopped"
    seen = mock_request(stack, request_id, timeout=10)
    assert seen["end"] == "client_disconnect", seen
    assert seen["tokens_sent"] < 200, seen  # stopped at once, not after 40 s of answer


def test_a_dropped_connection_resumes_the_answer_by_itself(
    console: Console, stack: LocalStack
) -> None:
    """The tab's connection is torn down mid-answer (``ss -K``, as a network change does):
    the console resumes the answer after the last event it read, and shows every token
    once."""
    console.signed_in(stack.key)
    console.ask("mock-fault:tokens=300,delay=0.02", "Keep going")
    console.wait_tokens(20)
    # The first resume meets a draining worker's refusal (503, Retry-After), as in a rolling
    # restart; the console waits as told and tries again.
    refused: list[str] = []

    def draining_once(route: Route) -> None:
        if refused:
            route.continue_()
            return
        refused.append(route.request.url)
        route.fulfill(
            status=503,
            headers={"Retry-After": "1", "Content-Type": "application/json"},
            body=json.dumps({"error": {"type": "draining", "code": "draining", "message": "x"}}),
        )

    console.page.route("**/v1/chat/completions/*/events", draining_once)
    tear_down_connections(stack)  # every connection of the tab's to nginx, torn down
    assert console.wait_status("done", "failed", timeout=40) == "done", console.text("#chat-error")
    assert len(refused) == 1 and int(console.text("#reconnects")) >= 2
    assert console.text("#answer") == mock_text(300)  # nothing lost, nothing twice
    assert console.text("#tokens") == "300"


def test_errors_are_shown_as_the_proxy_reports_them(console: Console, stack: LocalStack) -> None:
    console.sign_in("sk-not-a-key-of-this-stack-000000000")
    console.page.wait_for_selector("#sign-in-error:not(:empty)")
    assert "401" in console.text("#sign-in-error")
    assert console.page.is_hidden("#chat")
    console.page.focus("#key")
    console.signed_in(stack.key)
    console.ask("mock-fault:error_after=3", "fail in the middle")
    assert console.wait_status("failed") == "failed"
    error = console.text("#chat-error")
    assert error and "upstream" in error.lower(), error
    assert int(console.text("#tokens")) == 3  # what came before the error stays shown
    console.shot("chat-error")
    console.ask("mock-fault:status=400", "refused before the first byte")
    assert console.wait_status("failed") == "failed"
    assert console.text("#chat-error").startswith("400 "), console.text("#chat-error")
    assert console.text("#answer") == ""


def card_of(console: Console, job_id: str | None = None) -> ElementHandle:
    """A job's card (the newest, without ``job_id``), once the page shows it."""
    selector = "#job-list li" if job_id is None else f"#job-list li[data-job-id='{job_id}']"
    card = console.page.wait_for_selector(selector, timeout=10_000)
    assert card is not None
    return card


def start_job(console: Console, steps: int, delay: float) -> str:
    console.page.click("a[data-page=jobs]")
    console.page.wait_for_selector("#job-kind option[value=simulate]", state="attached")
    console.page.select_option("#job-kind", "simulate")
    console.page.wait_for_selector("#job-params input[name=steps]")
    console.page.fill("#job-params input[name=steps]", str(steps))
    console.page.fill("#job-params input[name=delay]", str(delay))
    before = set(
        console.page.eval_on_selector_all("#job-list li", "l => l.map(e => e.dataset.jobId)")
    )
    console.page.click("#job-start")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = console.page.eval_on_selector_all("#job-list li", "l => l.map(e => e.dataset.jobId)")
        new = [i for i in ids if i not in before]
        if new:
            assert ids[0] == new[0]  # the newest on top
            job_id: str = new[0]
            return job_id
        time.sleep(0.05)
    raise AssertionError("the started job never showed")


def wait_job(
    console: Console, job_id: str, states: tuple[str, ...], timeout: float
) -> ElementHandle:
    card = card_of(console, job_id)
    deadline = time.monotonic() + timeout
    while card.get_attribute("data-state") not in states and time.monotonic() < deadline:
        time.sleep(0.1)
    assert card.get_attribute("data-state") in states, card.inner_text()
    return card


def test_a_jobs_bar_reaches_100_across_a_dropped_connection_with_no_event_lost_or_twice(
    console: Console, stack: LocalStack
) -> None:
    console.signed_in(stack.key)
    job_id = start_job(console, steps=60, delay=0.05)
    card = card_of(console, job_id)
    deadline = time.monotonic() + 20
    while int(card.get_attribute("data-events") or 0) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    tear_down_connections(stack)  # the EventSource's connection, torn down mid-job
    card = wait_job(console, job_id, ("succeeded", "failed", "cancelled"), timeout=40)
    assert card.get_attribute("data-state") == "succeeded", card.inner_text()
    assert int(card.get_attribute("data-reconnects") or 0) >= 1  # the EventSource came back itself
    job = httpx.get(
        f"{stack.base}/jobs/{job_id}", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10
    ).json()
    # Every event once, in order: as many as the job has, the last one its last.
    assert card.get_attribute("data-events") == card.get_attribute("data-last-id")
    assert card.get_attribute("data-last-id") == job["last_event_id"]
    assert "out of order" not in card.inner_text()
    assert (
        console.page.eval_on_selector(f"li[data-job-id='{job_id}'] progress", "p => p.value") == 100
    )
    assert "result" in card.inner_text()
    console.shot("jobs")


def test_a_job_survives_a_reload_and_cancel_ends_it(console: Console, stack: LocalStack) -> None:
    console.signed_in(stack.key)
    job_id = start_job(console, steps=400, delay=0.05)
    console.page.reload()  # the key is forgotten; the job is not
    console.sign_in(stack.key)
    console.page.wait_for_selector("#jobs:not([hidden])")  # the page it was on (#jobs)
    console.page.wait_for_selector(f"#job-list li[data-job-id='{job_id}']")
    card = wait_job(console, job_id, ("running",), timeout=20)
    console.page.click(f"li[data-job-id='{job_id}'] button.cancel")
    card = wait_job(console, job_id, ("succeeded", "failed", "cancelled"), timeout=20)
    assert card.get_attribute("data-state") == "cancelled", card.inner_text()
    assert console.page.is_hidden(f"li[data-job-id='{job_id}'] button.cancel")
    assert all(url.startswith(f"{stack.base}/") for url in console.requests)


def log_lines(console: Console) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = console.page.eval_on_selector_all(
        "#log-lines li",
        "l => l.map(e => ({source: e.dataset.source, text: e.querySelector('.text').textContent,"
        " cls: e.className}))",
    )
    return found


def wait_lines(console: Console, marker: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lines = [line for line in log_lines(console) if marker in line["text"]]
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(
        f"{len(lines)} lines with {marker}, not {count}: {log_lines(console)[-5:]}"
    )


def follow(
    console: Console, names: list[str], grep: str = "", backlog: int = 0, started: bool = True
) -> None:
    console.page.click("a[data-page=logs]")
    for name in names:
        console.page.check(f"#log-files input[value='{name}']")
    console.page.fill("#log-grep", grep)
    console.page.fill("#log-backlog", str(backlog))
    console.page.click("#log-follow")
    if started:
        console.page.wait_for_selector("#log-pause:not([disabled])")


def test_following_logs_shows_a_new_line_within_2_s_grep_filters_and_pause_loses_nothing(
    console: Console, stack: LocalStack
) -> None:
    console.signed_in(stack.key)
    marker = f"console-marker-{time.time_ns()}"
    follow(console, ["nginx"], grep=marker)
    time.sleep(0.5)  # the follower is on (the stream answered) before the line is written
    httpx.get(f"{stack.base}/{marker}-one", timeout=10)  # a 404: one access log line
    written = time.monotonic()
    (line,) = wait_lines(console, f"{marker}-one", 1, timeout=2.0)
    assert time.monotonic() - written < 2.0
    assert line["source"] == "nginx" and '"status":404' in line["text"]
    httpx.get(f"{stack.base}/healthz-and-not-the-marker", timeout=10)
    time.sleep(0.5)
    assert all(marker in entry["text"] for entry in log_lines(console))  # grep (RE2) filters
    # Paused, lines written meanwhile are not lost: Resume asks for them from the last one.
    console.page.click("#log-pause")
    for n in range(3):
        httpx.get(f"{stack.base}/{marker}-paused-{n}", timeout=10)
    time.sleep(0.5)
    assert wait_lines(console, marker, 1, timeout=1) and len(log_lines(console)) == 1
    console.page.click("#log-pause")  # Resume
    paused = wait_lines(console, f"{marker}-paused-", 3, timeout=5)
    assert [f"{marker}-paused-{n}" in p["text"] for n, p in enumerate(paused)] == [True] * 3
    assert len(log_lines(console)) == 4  # each once
    # A JSON line pretty-printed on demand.
    console.page.click("#log-lines li.json")
    pretty = console.page.inner_text("#log-lines li.json pre")
    assert json.loads(pretty)["status"] == 404
    console.shot("logs")


def test_two_logs_merged_with_their_source_and_a_bad_pattern_said_plainly(
    console: Console, stack: LocalStack
) -> None:
    console.signed_in(stack.key)
    follow(console, ["nginx", "demo"], grep="(", started=False)
    console.page.wait_for_selector("#logs-error:not(:empty)")
    assert "400" in console.text("#logs-error"), console.text("#logs-error")
    assert console.page.is_disabled("#log-pause")  # nothing followed
    marker = f"merged-{time.time_ns()}"
    console.page.fill("#log-grep", marker)
    console.page.click("#log-follow")
    console.page.wait_for_selector("#log-pause:not([disabled])")
    time.sleep(0.5)
    # One request through nginx to demo, its id the marker: a line in each one's log.
    with httpx.stream(
        "GET", f"{stack.base}/toy-stream", headers={"X-Request-ID": marker}, timeout=10
    ) as answer:
        next(answer.iter_bytes())  # then it leaves: both log the request's end
    lines = wait_lines(console, marker, 2, timeout=10)
    assert {line["source"] for line in lines} == {"nginx", "demo"}, lines


def test_the_console_reads_at_a_phones_width(browser: Browser, stack: LocalStack) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        console = Console(context.new_page(), stack.base)
        console.sign_in(stack.key)
        console.page.wait_for_selector("#chat:not([hidden])")
        width = console.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, width  # no sideways scrolling
        console.shot("chat-390")
    finally:
        context.close()


def test_each_services_stream_summary_goes_through_nginx_to_a_key_only(stack: LocalStack) -> None:
    listed = httpx.get(f"{stack.base}/_sluice/services", timeout=10)
    assert listed.status_code == 200
    assert listed.headers["cache-control"] == "no-store"
    services = listed.json()["services"]
    assert {"chat-proxy", "demo", "log-tail", "progress"} <= set(services)
    assert "mock-upstream" not in services  # takes no keys: not the console's
    key = {"Authorization": f"Bearer {stack.key}"}
    for service in services:
        answer = httpx.get(f"{stack.base}/_sluice/streams/{service}", headers=key, timeout=10)
        assert answer.status_code == 200, (service, answer.text)
        assert answer.json()["service"] == service
    anonymous = httpx.get(f"{stack.base}/_sluice/streams/demo", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"
    wrong = httpx.get(
        f"{stack.base}/_sluice/streams/demo",
        headers={"Authorization": "Bearer sk-wrong-00000000000000000000"},
        timeout=10,
    )
    assert wrong.status_code == 401
    for path in (
        "/_sluice/streams/mock-upstream",
        "/_sluice/streams/nobody",
        "/_sluice/streams/",
        "/_sluice/streams/demo/../../metrics",
        "/_sluice/streams/demo%2f..%2f..%2fmetrics",
        "/_sluice/bad-request",  # nginx's own, internal
    ):
        status, text = raw_get(stack.base, path)
        assert status in (400, 404), (path, status)
        assert "# HELP" not in text, path  # /metrics stays private
    assert httpx.get(f"{stack.base}/metrics", timeout=10).status_code == 404


def test_the_streams_page_shows_a_stream_a_test_opens_and_how_it_ended(
    console: Console, stack: LocalStack
) -> None:
    console.signed_in(stack.key)
    console.page.click("#nav a[data-page='streams']")
    console.page.wait_for_selector("#streams-updated:not(:text-is('never'))")
    assert console.page.evaluate("() => document.activeElement.id") == "streams-title"
    row = "#stream-rows tr[data-service='demo'][data-route='/dummy-events']"
    headers = {"Authorization": f"Bearer {stack.key}", "Accept": "text/event-stream"}
    with httpx.stream("GET", f"{stack.base}/dummy-events", headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        chunks = stream.iter_bytes()  # (held: a dropped iterator closes the stream)
        assert next(chunks)  # open: an event came
        console.page.wait_for_selector(f"{row}[data-active='1']", timeout=30_000)
        assert int(console.text("#streams-open")) >= 1
        console.shot("streams")
    # Left: the page says the stream ended, and how.
    console.page.wait_for_selector(f"{row}[data-active='0']", timeout=30_000)
    console.page.wait_for_selector(f"{row} td.ended:has-text('client_disconnect')", timeout=30_000)
    first_byte = console.page.inner_text(f"{row} td:nth-child(6)")
    assert first_byte.endswith("ms") and "\u2013" not in first_byte, first_byte
    # chat-proxy's time to first token, once an answer was streamed.
    console.page.click("#nav a[data-page='chat']")
    console.ask("mock", "Count to three")
    console.wait_status("done")
    console.page.click("#nav a[data-page='streams']")
    ttft = "#stream-latencies div[data-service='chat-proxy'][data-latency='time_to_first_token'] dd"
    console.page.wait_for_selector(ttft, timeout=10_000)
    assert console.page.inner_text(ttft).endswith("ms")
    # Every call the page made went to this origin, with the key, never with it in a URL.
    assert all(url.startswith(stack.base) for url in console.requests), console.requests
    assert not [url for url in console.requests if stack.key in url]


def test_the_streams_page_says_which_service_it_cannot_reach(
    console: Console, stack: LocalStack
) -> None:
    console.signed_in(stack.key)
    console.page.route(
        "**/_sluice/streams/log-tail",
        lambda route: route.fulfill(
            status=502,
            content_type="application/json",
            body=json.dumps({"error": {"code": "upstream_unavailable", "message": "down"}}),
        ),
    )
    hung: list[Route] = []
    console.page.route(
        "**/_sluice/streams/progress", lambda route: hung.append(route)
    )  # never answered
    counted = httpx.get(
        f"{stack.base}/dummy-counter",
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=30,
    )
    assert counted.status_code == 200
    console.page.click("#nav a[data-page='streams']")
    down = "#stream-rows tr.down[data-service='log-tail']"
    console.page.wait_for_selector(down, timeout=20_000)
    assert "502 upstream_unavailable: down" in console.page.inner_text(down)
    hanging = "#stream-rows tr.down[data-service='progress']"
    assert "no answer in 5 s" in console.page.inner_text(hanging)
    assert hung  # it was asked, and hung
    # The others still show.
    demo = "#stream-rows tr:not(.down)[data-service='demo'][data-route='/dummy-counter']"
    console.page.wait_for_selector(demo, timeout=10_000)


def tab_to(console: Console, selector: str, presses: int = 40) -> None:
    """Tab (only Tab) until the focus is on ``selector``, as a keyboard user gets there."""
    matches = "s => document.activeElement !== null && document.activeElement.matches(s)"
    for _ in range(presses):
        console.page.keyboard.press("Tab")
        if console.page.evaluate(matches, selector):
            return
    focused = console.page.evaluate("() => document.activeElement?.outerHTML.slice(0, 120)")
    raise AssertionError(f"{selector} never got the focus by Tab; it stayed at {focused}")


def test_every_page_is_driven_by_the_keyboard_alone(console: Console, stack: LocalStack) -> None:
    console.signed_in(stack.key)
    # Jobs: the nav, the kind, its params, Start, then the job's own Cancel.
    tab_to(console, "#nav a[data-page='jobs']")
    console.page.keyboard.press("Enter")
    console.page.wait_for_selector("#jobs:not([hidden])")
    console.page.wait_for_selector("#job-kind option[value=simulate]", state="attached")
    assert console.page.evaluate("() => document.activeElement.id") == "job-kind"
    console.page.keyboard.type("simulate")  # a select takes its option's name typed
    tab_to(console, "#job-params input[name=steps]")
    console.page.keyboard.press("Control+A")
    console.page.keyboard.type("200")
    tab_to(console, "#job-params input[name=delay]")
    console.page.keyboard.press("Control+A")
    console.page.keyboard.type("0.2")
    tab_to(console, "#job-start")
    ids = "l => l.map(e => e.dataset.jobId)"
    before = set(console.page.eval_on_selector_all("#job-list li", ids))  # earlier tests' too
    console.page.keyboard.press("Enter")
    deadline = time.monotonic() + 10
    new: list[str] = []
    while not new and time.monotonic() < deadline:
        new = [i for i in console.page.eval_on_selector_all("#job-list li", ids) if i not in before]
        time.sleep(0.05)
    assert new, "the started job never showed"
    job_id = new[0]
    tab_to(console, f"#job-list li[data-job-id='{job_id}'] button")
    console.page.keyboard.press("Space")
    wait_job(console, job_id, ("cancelled",), timeout=15)
    # Logs: a file's box with Space, Follow with Enter, Stop with Space.
    tab_to(console, "#nav a[data-page='logs']")
    console.page.keyboard.press("Enter")
    tab_to(console, "#log-files input[value='nginx']")
    console.page.keyboard.press("Space")
    assert console.page.is_checked("#log-files input[value='nginx']")
    tab_to(console, "#log-follow")
    console.page.keyboard.press("Enter")
    console.page.wait_for_selector("#log-stop:not([disabled])")
    tab_to(console, "#log-stop")
    console.page.keyboard.press("Space")
    console.page.wait_for_selector("#log-stop[disabled]")
    # Streams and Sign out.
    tab_to(console, "#nav a[data-page='streams']")
    console.page.keyboard.press("Enter")
    console.page.wait_for_selector("#streams:not([hidden])")
    assert console.page.evaluate("() => document.activeElement.id") == "streams-title"
    cookies = {c["path"] for c in console.page.context.cookies() if c["name"] == COOKIE_NAME}
    assert cookies == {"/jobs", "/logs"}  # what followed the job and the log
    tab_to(console, "#sign-out")
    console.page.keyboard.press("Enter")
    console.page.wait_for_selector("#sign-in:not([hidden])")
    assert console.page.evaluate("() => document.activeElement.id") == "key"
    # Signing out drops the stream-token cookies as well as the key.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [c for c in console.page.context.cookies() if c["name"] == COOKIE_NAME]
        if not left:
            break
        time.sleep(0.05)
    assert not left, left


def test_the_console_works_in_firefox_too(stack: LocalStack, tmp_path: Path, log_dir: Path) -> None:
    with firefox(tmp_path / "firefox-profile", log_dir) as fox:
        fox.goto(f"{stack.base}/console/")
        fox.wait("document.activeElement?.id === 'key'")
        fox.evaluate(
            f"(() => {{ document.getElementById('key').value = {json.dumps(stack.key)};"
            " document.getElementById('sign-in-form').requestSubmit(); return true; })()"
        )
        fox.wait("!document.getElementById('chat').hidden")
        # Chat: fetch + ReadableStream, as in Chromium.
        fox.evaluate(
            "(() => { document.getElementById('model').value = 'mock';"
            " document.getElementById('prompt').value = 'Count to three';"
            " document.getElementById('send').click(); return true; })()"
        )
        assert fox.wait("document.getElementById('status').textContent === 'done'", 30)
        assert int(fox.evaluate("document.getElementById('tokens').textContent")) > 0
        assert fox.evaluate("document.getElementById('answer').textContent.length") > 0
        # Jobs: an EventSource on a stream-token cookie, to the end.
        fox.evaluate("(() => { location.hash = '#jobs'; return true; })()")
        fox.wait("document.querySelector('#job-kind option[value=simulate]') !== null")
        fox.evaluate(
            "(() => { const kind = document.getElementById('job-kind'); kind.value = 'simulate';"
            " kind.dispatchEvent(new Event('change')); return true; })()"
        )
        fox.wait("document.querySelector('#job-params input[name=steps]') !== null")
        fox.evaluate(
            "(() => { document.querySelector('#job-params input[name=steps]').value = '5';"
            " document.querySelector('#job-params input[name=delay]').value = '0.05';"
            " document.getElementById('job-start').click(); return true; })()"
        )
        card = "document.querySelector('#job-list li')"
        assert fox.wait(f"{card}?.dataset.state === 'succeeded' && {card}.dataset.events", 30)
        # Streams: the summaries, polled.
        fox.evaluate("(() => { location.hash = '#streams'; return true; })()")
        row = "#stream-rows tr[data-service='chat-proxy'][data-route='/v1/chat/completions']"
        assert fox.wait(f"document.querySelector({json.dumps(row)}) !== null")
