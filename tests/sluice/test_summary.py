"""GET /_sluice/streams: a service's streams now and how they ended, from its own metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sluice.auth import COOKIE_NAME
from sluice.summary import summary
from tests.sluice.test_rates import KEY_A, KEYS, bearer
from tests.sluice.test_streaming import Probe, make_app
from tests.support import asgi

pytestmark = pytest.mark.anyio


def _registry() -> CollectorRegistry:
    """The core's stream metrics (names and labels as sluice.metrics has them) in a registry
    of the test's own, and one latency histogram of a service's."""
    registry = CollectorRegistry()
    active = Gauge("sluice_streams_active", "", ["service", "route"], registry=registry)
    started = Counter("sluice_streams_started", "", ["service", "route"], registry=registry)
    ended = Counter("sluice_streams_ended", "", ["service", "route", "reason"], registry=registry)
    limited = Counter("sluice_rate_limited", "", ["service", "route", "limit"], registry=registry)
    auth = Counter("sluice_auth_failures", "", ["service", "reason"], registry=registry)
    ttfb = Histogram(
        "sluice_time_to_first_byte_seconds",
        "",
        ["service", "route"],
        buckets=(0.01, 0.1, 1),
        registry=registry,
    )
    ttft = Histogram(
        "svc_ttft_seconds", "", ["service", "model"], buckets=(0.1, 1), registry=registry
    )
    active.labels("a", "/x").set(2)
    started.labels("a", "/x").inc(5)
    ended.labels("a", "/x", "completed").inc(2)
    ended.labels("a", "/x", "client_disconnect").inc(1)
    limited.labels("a", "/x", "streams_per_key").inc(4)
    limited.labels("a", "/json", "rate").inc(9)  # a JSON route's 429s: no stream route
    limited.labels("a", "/capped", "streams_global").inc()  # refused all it was asked
    auth.labels("a", "invalid").inc(3)
    for seconds in (0.005, 0.05, 0.5, 5):
        ttfb.labels("a", "/x").observe(seconds)
    ttft.labels("a", "m1").observe(0.05)
    ttft.labels("a", "m2").observe(0.5)
    # Another service's samples in the same registry (one process, several apps): not a's.
    active.labels("b", "/x").set(7)
    ended.labels("b", "/y", "error").inc()
    ttft.labels("b", "m1").observe(0.05)
    return registry


def test_a_summary_holds_only_its_service_and_sums_histograms_over_other_labels() -> None:
    got = summary("a", {"ttft": "svc_ttft_seconds"}, _registry())
    assert got["service"] == "a"
    assert got["source"] == "service"
    assert got["instance"] == socket.gethostname()
    capped, route = got["routes"]
    assert (capped["route"], capped["started"], capped["refused"]) == (
        "/capped",
        0,
        {"streams_global": 1},
    )
    assert route["route"] == "/x"
    assert route["active"] == 2
    assert route["started"] == 5
    assert route["ended"] == {"client_disconnect": 1, "completed": 2}
    assert route["refused"] == {"streams_per_key": 4}
    assert route["ttfb"] == {
        "le": [0.01, 0.1, 1.0],
        "counts": [1, 2, 3, 4],  # cumulative, +Inf last
        "count": 4,
        "sum": pytest.approx(5.555),
    }
    assert got["auth_failures"] == {"invalid": 3}
    assert got["latencies"]["ttft"]["counts"] == [1, 2, 2]  # m1 and m2, not b's
    json.dumps(got, allow_nan=False)  # plain JSON: no Infinity or NaN


def test_a_service_with_nothing_recorded_yet_has_an_empty_summary() -> None:
    got = summary("nobody", {"ttft": "svc_ttft_seconds"}, _registry())
    assert got["routes"] == []
    assert got["auth_failures"] == {}
    assert got["latencies"]["ttft"] == {"le": [], "counts": [0.0], "count": 0.0, "sum": 0.0}


async def test_the_route_shows_a_stream_while_it_is_open_and_how_it_ended() -> None:
    probe = Probe()
    app = make_app(probe, public=False, api_keys=KEYS, service_name="summary-route")
    async with asgi.lifespan(app):

        async def ticks_when(ready: Callable[[dict[str, Any]], bool]) -> asgi.Result:
            for _ in range(200):  # up to ~10 s
                answer = await asgi.request(app, "/_sluice/streams", headers=bearer(KEY_A))
                routes = json.loads(answer.body)["routes"]
                if routes and ready(routes[0]):
                    break
                await asyncio.sleep(0.05)
            return answer

        held = asyncio.create_task(
            asgi.request(app, "/ticks?count=100000&delay=0.05", headers=bearer(KEY_A), timeout=60)
        )
        during = await ticks_when(lambda ticks: ticks["active"] == 1)
        one = await asgi.request(app, "/ticks?count=2", headers=bearer(KEY_A))
        assert one.status == 200
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        after = await ticks_when(lambda ticks: sum(ticks["ended"].values()) == 2)
    assert during.status == 200
    assert during.headers["cache-control"] == "no-store"
    (ticks,) = json.loads(during.body)["routes"]
    assert (ticks["route"], ticks["active"], ticks["started"]) == ("/ticks", 1, 1)
    (ticks,) = json.loads(after.body)["routes"]
    assert ticks["active"] == 0
    assert ticks["started"] == 2
    assert ticks["ended"]["completed"] == 1
    assert sum(ticks["ended"].values()) == 2  # the held one ended too, whatever its reason
    assert ticks["ttfb"]["count"] == 2


async def test_the_summary_needs_a_key_and_a_stream_token_does_not_open_it() -> None:
    app = make_app(Probe(), public=False, api_keys=KEYS, service_name="summary-auth")
    async with asgi.lifespan(app):
        anonymous = await asgi.request(app, "/_sluice/streams")
        wrong = await asgi.request(app, "/_sluice/streams", headers=bearer("sk-not-a-key-000000"))
        issued = await asgi.request(
            app,
            "/auth/stream-token",
            method="POST",
            headers=[*bearer(KEY_A), ("content-type", "application/json")],
            body=b'{"path": "/_sluice/"}',
        )
        token = json.loads(issued.body)["token"]
        by_cookie = await asgi.request(
            app, "/_sluice/streams", headers=[("cookie", f"{COOKIE_NAME}={token}")]
        )
        in_url = await asgi.request(app, f"/_sluice/streams?api_key={KEY_A}")
    assert anonymous.status == 401
    assert wrong.status == 401
    assert issued.status == 200
    assert by_cookie.status == 403
    assert json.loads(by_cookie.body)["error"]["code"] == "token_not_for_this_route"
    assert in_url.status == 401
    assert json.loads(in_url.body)["error"]["code"] == "key_in_url"


SCRIPT = textwrap.dedent(
    """
    import json, os
    from sluice import metrics
    from sluice.summary import summary

    metrics.STREAMS_STARTED.labels("mp", "/r").inc()
    metrics.STREAMS_ACTIVE.labels("mp", "/r").inc()
    child = os.fork()
    if child == 0:  # a second worker, forked as gunicorn's are
        metrics.STREAMS_STARTED.labels("mp", "/r").inc()
        metrics.STREAMS_ACTIVE.labels("mp", "/r").inc()
        metrics.TIME_TO_FIRST_BYTE.labels("mp", "/r").observe(0.002)
        os._exit(0)
    os.waitpid(child, 0)
    metrics.TIME_TO_FIRST_BYTE.labels("mp", "/r").observe(0.2)
    print(json.dumps(summary("mp")))
    """
)


def test_a_multiprocess_summary_sums_every_workers_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": ":".join(sys.path),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (route,) = json.loads(result.stdout)["routes"]
    assert route["started"] == 2
    assert route["active"] == 2  # livesum: the child's pid is not marked dead here
    ttfb = route["ttfb"]
    assert ttfb["count"] == 2
    assert ttfb["counts"][ttfb["le"].index(0.0025)] == 1  # the child's 2 ms one
