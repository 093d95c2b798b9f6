"""Through a real nginx in front of real gunicorn workers: nothing buffers, nothing leaks."""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import httpx
import httpx_sse
import pytest

from sluice.registry import registry
from sluice_dev import nginx
from tests.support.metrics import value, wait_for
from tests.support.paths import ROOT
from tests.support.procs import Proc


def _arrivals(url: str, **kwargs: object) -> tuple[list[bytes], list[float]]:
    chunks, times = [], []
    started = time.perf_counter()
    with httpx.stream("GET", url, timeout=10, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status_code == 200
        for chunk in response.iter_raw():
            chunks.append(chunk)
            times.append(time.perf_counter() - started)
    return chunks, times


@pytest.mark.parametrize("via", ["nginx", "direct"])
def test_toy_stream_chunks_arrive_one_by_one(via: str, front_door: Proc, demo: Proc) -> None:
    base = front_door.url if via == "nginx" else demo.url
    chunks, times = _arrivals(f"{base}/toy-stream")
    assert b"".join(chunks).decode().splitlines()[0] == "Starting stream..."
    assert len(chunks) == 5, chunks  # one read per message: not coalesced by a buffer
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] < 0.25, times  # the first line long before the last
    assert all(0.2 <= g <= 0.5 for g in gaps), gaps  # configured delay 0.3 s


def test_dummy_counter_through_nginx_with_curl(front_door: Proc) -> None:
    proc = subprocess.Popen(
        ["curl", "-sN", f"{front_door.url}/dummy-counter"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    started = time.perf_counter()
    lines = []
    for raw in proc.stdout:
        lines.append((raw.decode(), time.perf_counter() - started))
    assert proc.wait(10) == 0
    assert [line for line, _ in lines] == [f"Count: {i}\n" for i in range(1, 11)]
    times = [t for _, t in lines]
    assert times[0] < 0.2 and times[-1] > 1.6, times  # 10 lines, 0.2 s apart, as sent
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.1 <= g <= 0.4 for g in gaps), gaps


def test_dummy_events_parse_as_sse(front_door: Proc) -> None:
    with (
        httpx.Client(timeout=10) as client,
        httpx_sse.connect_sse(client, "GET", f"{front_door.url}/dummy-events") as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in source.response.headers
        events = []
        for sse in source.iter_sse():
            events.append(sse)
            if len(events) == 5:
                break
    assert {e.event for e in events} <= {"update", "alert", "info"}
    assert all(set(e.json()) == {"time", "value"} for e in events)


def test_sse_is_never_gzipped(front_door: Proc) -> None:
    with httpx.stream(
        "GET", f"{front_door.url}/dummy-events", headers={"Accept-Encoding": "gzip"}, timeout=10
    ) as response:
        assert "content-encoding" not in response.headers
        chunks = response.iter_raw()
        first = next(chunks)
    assert first.startswith(b"event: ")


def test_disconnect_ends_the_server_generator_within_a_second(front_door: Proc, demo: Proc) -> None:
    route = {"route": "/dummy-events", "service": "demo"}
    before = value(demo.url, "sluice_streams_ended_total", reason="client_disconnect", **route)
    with httpx.stream("GET", f"{front_door.url}/dummy-events", timeout=10) as response:
        chunks = response.iter_raw()  # held: a dropped iterator closes the connection
        next(chunks)
        wait_for(lambda: value(demo.url, "sluice_streams_active", **route) == 1, 5)
    left = time.monotonic()

    def ended() -> bool:
        after = value(demo.url, "sluice_streams_ended_total", reason="client_disconnect", **route)
        return after == before + 1

    wait_for(ended, 1.0, what="client_disconnect counted")
    assert value(demo.url, "sluice_streams_active", **route) == 0
    assert time.monotonic() - left < 1.0


def test_request_id_passes_through_and_is_generated(front_door: Proc, demo: Proc) -> None:
    given = httpx.get(f"{front_door.url}/dummy-counter", headers={"X-Request-ID": "req-42"})
    assert given.headers["x-request-id"] == "req-42"
    wait_for(lambda: '"request_id": "req-42"' in demo.log(), 3, what="request id in the log")
    made = httpx.get(f"{front_door.url}/healthz", headers={"X-Request-ID": "bad id\x7f"})
    assert len(made.headers["x-request-id"]) == 32 and made.headers.get_list("x-request-id") == [
        made.headers["x-request-id"]
    ]


def test_nginx_healthz_metrics_hidden_and_unknown_routes_are_json(front_door: Proc) -> None:
    health = httpx.get(f"{front_door.url}/healthz")
    assert health.json() == {"status": "ok", "service": "nginx"}
    metrics = httpx.get(f"{front_door.url}/metrics")
    assert metrics.status_code == 404 and metrics.json()["error"]["type"] == "not_found"
    unknown = httpx.get(f"{front_door.url}/etc/passwd")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found"


def test_access_log_is_json_without_query_strings(front_door: Proc) -> None:
    httpx.get(f"{front_door.url}/dummy-counter?token=secret-value")
    log_path = Path(front_door.extra["access_log"])
    wait_for(lambda: "dummy-counter" in log_path.read_text(), 3)
    text = log_path.read_text()
    assert "secret-value" not in text and '"service":"nginx"' in text


def test_shipped_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = nginx.write(
        ROOT / "nginx",
        tmp_path / "nginx",
        "127.0.0.1:8080",
        {s.name: f"127.0.0.1:{s.port}" for s in registry().public()},
    )
    out = subprocess.run([*nginx.command(conf), "-t"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr


@pytest.mark.parametrize("path", ["/v1", "/jobs/", "/dummy-events/", "/logs/"])
def test_regression_no_redirect_goes_where_the_host_header_says(
    path: str, front_door: Proc
) -> None:
    # nginx redirected /v1 to http://<Host header>/v1/ (and the services' trailing-slash
    # redirect did the same): an open redirect for whoever controls a link's Host.
    response = httpx.get(f"{front_door.url}{path}", headers={"host": "evil.example"}, timeout=5)
    location = response.headers.get("location", "")
    assert "evil.example" not in location
    assert not location or location.startswith("/"), location
