"""SIGTERM with streams open: every client is told to reconnect or ended cleanly, spread out.

The real thing: gunicorn (2 uvicorn workers) behind nginx gets SIGTERM as in a deploy.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import httpx_sse

from tests.support.procs import running, start_nginx, start_service, worker_pids

WINDOW = 2.0


@dataclass
class Client:
    events: int = 0
    reconnect: dict[str, object] | None = None
    retry: int | None = None
    ended_at: float | None = None
    clean: bool = False
    error: str | None = None
    lines: list[str] = field(default_factory=list)


def follow_sse(url: str, client: Client, opened: threading.Barrier) -> None:
    try:
        with (
            httpx.Client(timeout=WINDOW * 4) as http,
            httpx_sse.connect_sse(http, "GET", url) as source,
        ):
            for sse in source.iter_sse():
                if client.events == 0 and sse.event != "reconnect":
                    opened.wait(10)
                if sse.event == "reconnect":
                    client.reconnect = json.loads(sse.data)
                    client.retry = sse.retry
                    client.ended_at = time.monotonic()
                else:
                    client.events += 1
        client.clean = True  # the server closed the stream properly (chunked end)
    except Exception as exc:
        client.error = repr(exc)


def follow_text(url: str, client: Client, opened: threading.Barrier) -> None:
    try:
        with httpx.stream("GET", url, timeout=WINDOW * 4) as response:
            for line in response.iter_lines():
                if not client.lines:
                    opened.wait(10)
                client.lines.append(line)
        client.ended_at = time.monotonic()
        client.clean = True
    except Exception as exc:
        client.error = repr(exc)


def test_sigterm_drains_every_stream_with_a_reconnect_hint(log_dir: Path) -> None:
    env = {
        "SLUICE_DRAIN_WINDOW": str(WINDOW),
        "SLUICE_RECONNECT_RETRY_MS": "1500",
        "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.1",
        "SLUICE_DEV_DEMO_TOY_DELAY": "5",
        "SLUICE_DEV_DEMO_COUNTER_DELAY": "0.1",
    }
    demo = start_service("demo", log_dir, env, workers=2)
    nginx = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, log_dir)
    with running(nginx, demo):
        sse_clients = [Client() for _ in range(10)]
        text_client = Client()  # a finite text stream the window cannot finish
        counter_client = Client()  # one it can
        opened = threading.Barrier(len(sse_clients) + 3)
        threads = [
            threading.Thread(target=follow_sse, args=(f"{nginx.url}/dummy-events", c, opened))
            for c in sse_clients
        ]
        threads.append(
            threading.Thread(
                target=follow_text, args=(f"{nginx.url}/toy-stream", text_client, opened)
            )
        )
        threads.append(
            threading.Thread(
                target=follow_text, args=(f"{nginx.url}/dummy-counter", counter_client, opened)
            )
        )
        for t in threads:
            t.start()
        opened.wait(10)  # every stream has delivered something

        demo.popen.send_signal(signal.SIGTERM)
        term_at = time.monotonic()
        # Readiness flips at once; new streams are refused while the old ones drain.
        ready = httpx.get(f"{demo.url}/readyz", timeout=2)
        refused = httpx.get(f"{nginx.url}/dummy-events", timeout=2)
        accept = {"accept": "text/event-stream"}  # as a browser's EventSource asks
        hinted = httpx.get(f"{nginx.url}/dummy-events", headers=accept, timeout=2)
        for t in threads:
            t.join(WINDOW * 4)
        exit_code = demo.popen.wait(WINDOW + 10)
        exited_at = time.monotonic()

    assert ready.status_code == 503
    assert ready.json()["error"]["type"] == "draining"
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "draining"
    assert "retry-after" in refused.headers
    # An EventSource gives up for good on a 503: it gets a reconnect hint instead.
    assert hinted.status_code == 200
    assert "event: reconnect\n" in hinted.text and "retry: 1500\n" in hinted.text
    assert not any(t.is_alive() for t in threads), "a client hung"
    for client in sse_clients:
        assert client.error is None, client.error
        assert client.reconnect == {"reason": "drain", "retry_ms": 1500}
        assert client.retry == 1500
        assert client.clean
        assert client.events >= 1
    # Plain text has no reconnect hint: a text answer the window cannot finish is cut (the
    # client sees an incomplete body), never ended cleanly as if it were whole.
    assert text_client.error is not None and "RemoteProtocolError" in text_client.error
    assert not text_client.clean
    assert text_client.lines[0] == "Starting stream..."
    assert len(text_client.lines) < 5
    # One it can finish runs to its end, whole.
    assert counter_client.error is None, counter_client.error
    assert counter_client.clean and len(counter_client.lines) == 10
    ends = sorted(c.ended_at - term_at for c in sse_clients if c.ended_at is not None)
    assert ends[-1] <= WINDOW + 1.0, ends
    assert ends[-1] - ends[0] >= WINDOW * 0.25, f"reconnects not spread: {ends}"
    assert exit_code == 0
    assert exited_at - term_at < WINDOW + 8

    # The log: each worker's drain started before its streams ended, and finished clean.
    records = [json.loads(line) for line in demo.log().splitlines() if line.startswith("{")]
    started = {r["pid"]: r["ts"] for r in records if r.get("msg") == "drain started"}
    finished = [r for r in records if r.get("msg") == "drain finished"]
    assert len(started) == 2
    assert all(r["clean"] for r in finished)
    assert len(finished) == 2
    drained = [r for r in records if r.get("stream_end") == "drain"]
    assert len(drained) == 11
    assert all(r["ts"] >= started[r["pid"]] for r in drained)


def test_sighup_replaces_workers_without_a_gap_or_a_refusal(log_dir: Path) -> None:
    """A rolling restart (gunicorn's SIGHUP) with one worker: the old worker serves on until
    its replacement is ready, then drains; no request in between is refused or lost."""
    env = {
        "SLUICE_DRAIN_WINDOW": str(WINDOW),
        "SLUICE_DEV_DEMO_EVENTS_INTERVAL": "0.1",
        "SLUICE_DEV_DEMO_COUNTER_DELAY": "0",
        "SLUICE_RATE_LIMIT": "100000/minute",
    }
    demo = start_service("demo", log_dir, env, workers=1)
    nginx = start_nginx({"demo": f"127.0.0.1:{demo.port}"}, log_dir)
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=10) as http:
            for _ in range(5000):  # bounded; stopped once the hand-over is over
                if stop.is_set():
                    return
                try:
                    response = http.get(f"{nginx.url}/dummy-counter")
                    ok = response.status_code == 200 and response.text.count("Count:") == 10
                    outcomes.append("ok" if ok else f"{response.status_code}: {response.text}")
                except httpx.HTTPError as exc:
                    outcomes.append(repr(exc))

    with running(nginx, demo):
        (old,) = worker_pids(demo)
        listener = Client()
        opened = threading.Barrier(2)
        threads = [threading.Thread(target=hammer) for _ in range(2)]
        threads.append(
            threading.Thread(
                target=follow_sse, args=(f"{nginx.url}/dummy-events", listener, opened)
            )
        )
        for t in threads:
            t.start()
        opened.wait(10)
        demo.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while old in worker_pids(demo) and time.monotonic() < deadline:
            time.sleep(0.05)
        replaced = old not in worker_pids(demo)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(WINDOW * 4)
        (new,) = worker_pids(demo)

    assert replaced, "the old worker did not exit"
    assert outcomes and set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:5]
    assert listener.error is None, listener.error
    assert listener.reconnect is not None and listener.clean  # open streams still drained
    records = [json.loads(line) for line in demo.log().splitlines() if line.startswith("{")]
    served = {r["pid"] for r in records if r.get("path") == "/dummy-counter"}
    assert {old, new} <= served
    by_msg = {(r["pid"], r.get("msg")): r for r in records}
    assert (old, "serving until replaced") in by_msg
    assert by_msg[(new, "service started")]["ts"] <= by_msg[(old, "drain started")]["ts"]
    assert by_msg[(old, "drain finished")]["handed_over_at_start"] is True
