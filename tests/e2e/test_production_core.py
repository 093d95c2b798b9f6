"""The production core through nginx + gunicorn (2 workers) + a real Redis."""

from __future__ import annotations

import threading

import httpx
import redis as redis_sync

from tests.e2e.conftest import ALL_KEYS, K_CAP, K_METRICS, K_RATE
from tests.support.metrics import scrape, value, wait_for
from tests.support.procs import Proc


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Holder:
    """An SSE stream held open in a thread until told to let go."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.status = 0
        self.events = 0
        self.release = threading.Event()
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self.thread.start()
        self.opened.wait(10)

    def _run(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", url, headers=headers, timeout=10) as response:
            self.status = response.status_code
            chunks = response.iter_raw()
            if response.status_code == 200:
                next(chunks)
                self.events += 1
            self.opened.set()
            self.release.wait(20)

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)


def test_seed_routes_need_a_key_when_configured(secured: tuple[Proc, Proc]) -> None:
    _, nginx = secured
    refused = httpx.get(f"{nginx.url}/toy-stream")
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    in_url = httpx.get(f"{nginx.url}/toy-stream?api_key={K_CAP}")
    assert in_url.status_code == 401
    assert "URL" in in_url.json()["error"]["message"]


def test_stream_cap_holds_across_workers_through_redis(
    secured: tuple[Proc, Proc], redis_server: Proc
) -> None:
    _, nginx = secured
    url = f"{nginx.url}/dummy-events"
    held = [Holder(url, auth(K_CAP)) for _ in range(3)]
    try:
        assert [h.status for h in held] == [200, 200, 200]
        over = httpx.get(url, headers=auth(K_CAP))
        assert over.status_code == 429
        assert over.json()["error"]["type"] == "too_many_streams"
        assert over.headers["retry-after"] == "5"
        store = redis_sync.Redis.from_url(redis_server.extra["url"])
        key_id = __import__("hashlib").sha256(K_CAP.encode()).hexdigest()[:8]
        assert store.zcard(f"sluice:demo:streams:caller:key:{key_id}") == 3
    finally:
        for h in held:
            h.close()
    wait_for(
        lambda: store.zcard(f"sluice:demo:streams:caller:key:{key_id}") == 0,
        5,
        what="slots released in Redis",
    )
    with httpx.stream("GET", url, headers=auth(K_CAP), timeout=10) as again:
        assert again.status_code == 200


def test_rate_limit_holds_across_workers(secured: tuple[Proc, Proc]) -> None:
    _, nginx = secured
    codes = []
    for _ in range(8):  # fresh connections: spread over both workers
        with httpx.stream("GET", f"{nginx.url}/dummy-counter", headers=auth(K_RATE)) as response:
            codes.append(response.status_code)  # leave at the headers: no need to wait 5 s
    assert codes == [200] * 6 + [429, 429]
    refused = httpx.get(f"{nginx.url}/dummy-counter", headers=auth(K_RATE))
    assert refused.json()["error"]["type"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit"] == "6"


def test_metrics_count_a_scripted_scenario(secured: tuple[Proc, Proc]) -> None:
    demo, nginx = secured
    toy = {"service": "demo", "route": "/toy-stream"}
    events = {"service": "demo", "route": "/dummy-events"}
    before = scrape(demo.url)

    def delta(name: str, **labels: str) -> float:
        wanted = set(labels.items())
        now = value(demo.url, name, **labels)
        was = sum(v for (n, ls), v in before.items() if n == name and wanted <= ls)
        return now - was

    # 3 streams that complete, concurrently.
    threads = [
        threading.Thread(
            target=lambda: httpx.get(f"{nginx.url}/toy-stream", headers=auth(K_METRICS), timeout=10)
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 8 event streams: 6 accepted and left after one event, 2 over the rate limit (6/minute;
    # the cap of 3 is never reached: each is closed before the next).
    statuses = []
    for _ in range(8):
        with httpx.stream("GET", f"{nginx.url}/dummy-events", headers=auth(K_METRICS)) as r:
            statuses.append(r.status_code)
            if r.status_code == 200:
                chunks = r.iter_raw()
                next(chunks)
        if r.status_code == 200:
            wait_for(lambda: value(demo.url, "sluice_streams_active", **events) == 0, 3)
    httpx.get(f"{nginx.url}/dummy-events", headers=auth("sk-wrong"))
    assert statuses == [200] * 6 + [429, 429]
    accepted = 6
    wait_for(
        lambda: (
            delta("sluice_streams_ended_total", reason="client_disconnect", **events) == accepted
        ),
        3,
        what="disconnects counted",
    )
    assert delta("sluice_streams_started_total", **toy) == 3
    assert delta("sluice_streams_ended_total", reason="completed", **toy) == 3
    assert delta("sluice_streams_started_total", **events) == accepted
    assert delta("sluice_rate_limited_total", limit="rate", **events) == 2
    assert delta("sluice_auth_failures_total", service="demo", reason="invalid") == 1
    assert delta("sluice_http_requests_total", status="429", **events) == 2
    assert delta("sluice_stream_events_total", **toy) == 15
    assert delta("sluice_time_to_first_byte_seconds_count", **toy) == 3
    assert value(demo.url, "sluice_streams_active", **toy) == 0
    assert value(demo.url, "sluice_streams_active", **events) == 0
    text = httpx.get(f"{demo.url}/metrics").text
    for key in ALL_KEYS:
        assert key not in text
