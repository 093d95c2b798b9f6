"""progress through its ASGI app, embedded mode (jobs in-process)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from sluice_services.progress.app import create_app
from sluice_services.progress.kinds import CHUNK
from sluice_services.progress.settings import ProgressSettings
from tests.support import asgi

pytestmark = pytest.mark.anyio

KEY_A = "sk-test-progress-a-000000000000000"
KEY_B = "sk-test-progress-b-000000000000000"
A = [("authorization", f"Bearer {KEY_A}"), ("content-type", "application/json")]
B = [("authorization", f"Bearer {KEY_B}"), ("content-type", "application/json")]


def app_with(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "api_keys": SecretStr(f"{KEY_A},{KEY_B}"),
        "dev_progress_seed_delay": 0.001,
        "heartbeat_interval": 0.2,
        **overrides,
    }
    return create_app(ProgressSettings(**values))


async def submit(app: Any, kind: str, params: dict[str, Any], who: Any = A) -> asgi.Result:
    body = json.dumps({"kind": kind, "params": params}).encode()
    return await asgi.request(app, "/jobs", method="POST", headers=who, body=body)


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for frame in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in frame.split("\n"):
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


async def test_job_lifecycle_and_events_to_the_end() -> None:
    async with asgi.lifespan(app_with()) as app:
        created = await submit(app, "simulate", {"steps": 5, "delay": 0.01})
        job = json.loads(created.body)
        stream = await asgi.request(app, job["events_url"], headers=A)
        state = json.loads((await asgi.request(app, job["status_url"], headers=A)).body)
        listed = json.loads((await asgi.request(app, "/jobs", headers=A)).body)
    assert created.status == 202
    assert created.headers["location"] == f"/jobs/{job['id']}"
    events = sse_events(stream.text)
    assert [e["event"] for e in events] == ["log"] + ["progress"] * 5 + ["complete"]
    assert [int(e["id"]) for e in events] == list(range(1, 8))
    assert events[3]["data"]["percent"] == 60.0
    assert events[-1]["data"]["result"] == {"steps": 5}
    assert state["state"] == "succeeded"
    assert state["percent"] == 100.0
    assert state["started_at"] <= state["finished_at"]
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]


async def test_failure_and_late_subscriber_gets_history_then_end() -> None:
    async with asgi.lifespan(app_with()) as app:
        job = json.loads(
            (await submit(app, "simulate", {"steps": 5, "delay": 0, "fail_at": 3})).body
        )
        await asyncio.sleep(0.1)
        late = await asgi.request(app, job["events_url"], headers=A)
        ndjson = await asgi.request(app, job["events_url"] + "?format=ndjson&after=2", headers=A)
    events = sse_events(late.text)
    assert [e["event"] for e in events] == ["log", "progress", "progress", "failed"]
    assert events[-1]["data"]["error"] == "simulated failure at step 3"
    lines = [json.loads(x) for x in ndjson.text.splitlines()]
    assert [x["id"] for x in lines] == ["3", "4"]
    assert lines[-1]["event"] == "failed"


async def test_regression_a_subscriber_after_the_end_or_past_it_waited_forever() -> None:
    # An EventSource reconnects after the server closes: with Last-Event-ID at the final event
    # (or any id past the job's last) it waited on an event that never comes, holding a cap
    # slot, so 20 cancelled jobs watched in a browser locked the key out with 429s.
    async with asgi.lifespan(app_with()) as app:
        job = json.loads((await submit(app, "simulate", {"steps": 3, "delay": 0})).body)
        await asyncio.sleep(0.1)
        whole = sse_events((await asgi.request(app, job["events_url"], headers=A)).text)
        last = whole[-1]["id"]
        at_end = await asgi.request(
            app, job["events_url"], headers=[*A, ("last-event-id", last)], timeout=3
        )
        past = await asgi.request(app, job["events_url"] + "?after=999999", headers=A, timeout=3)
        legacy = await asgi.request(
            app, job["events_url"] + "?after=1796169644202-0", headers=A, timeout=3
        )
        running = json.loads((await submit(app, "simulate", {"steps": 100, "delay": 0.05})).body)
        ahead = await asgi.request(app, running["events_url"] + "?after=50", headers=A, timeout=3)
        assert app.state.runtime.caps.local_total == 0
    assert whole[-1]["event"] == "complete"
    assert at_end.status == 204 and at_end.body == b""
    for refused in (past, legacy, ahead):
        assert refused.status == 400
        assert json.loads(refused.body)["error"]["type"] == "invalid_event_id"


async def test_cancel_stops_a_running_job_within_a_second() -> None:
    async with asgi.lifespan(app_with()) as app:
        job = json.loads((await submit(app, "simulate", {"steps": 1000, "delay": 0.05})).body)
        await asyncio.sleep(0.2)
        asked = time.monotonic()
        cancelled = await asgi.request(app, job["status_url"], method="DELETE", headers=A)
        stream = await asgi.request(app, job["events_url"], headers=A)
        took = time.monotonic() - asked
        state = json.loads((await asgi.request(app, job["status_url"], headers=A)).body)
    assert cancelled.status == 202
    assert took < 1.0
    assert sse_events(stream.text)[-1]["event"] == "cancelled"
    assert state["state"] == "cancelled"


async def test_another_key_sees_nothing() -> None:
    async with asgi.lifespan(app_with()) as app:
        job = json.loads((await submit(app, "simulate", {"steps": 2, "delay": 0})).body)
        for method, path in (
            ("GET", job["status_url"]),
            ("GET", job["events_url"]),
            ("DELETE", job["status_url"]),
        ):
            other = await asgi.request(app, path, method=method, headers=B)
            assert other.status == 404
            assert json.loads(other.body)["error"]["message"] == "no such job"
        assert json.loads((await asgi.request(app, "/jobs", headers=B)).body) == {"jobs": []}
        assert (await asgi.request(app, "/jobs/nope", headers=A)).status == 404
        anonymous = await asgi.request(app, "/jobs", method="POST", body=b"{}")
    assert anonymous.status == 401


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("explode", {}, "body.kind"),
        ("simulate", {"steps": 0}, "body.params.steps"),
        ("simulate", {"steps": "many"}, "body.params.steps"),
        ("simulate", {"delay": -1}, "body.params.delay"),
        ("simulate", {"surprise": 1}, "body.params.surprise"),
        ("checksum", {}, "body.params"),
        ("checksum", {"file": "../etc/passwd"}, "body.params.file"),
    ],
)
async def test_bad_kinds_and_params_are_422_naming_the_field(
    kind: str, params: dict[str, Any], field: str
) -> None:
    async with asgi.lifespan(app_with()) as app:
        result = await submit(app, kind, params)
    body = json.loads(result.body)
    assert result.status == 422
    assert body["error"]["type"] == "validation_error"
    assert field in [d["field"] for d in body["error"]["details"]]


@pytest.mark.parametrize(
    "event_id",
    ["1-0; drop table", "\u0663", "1\u0663", "\uff11", "-1", "1" * 19],  # \u0663: Arabic-Indic 3
)
async def test_bad_last_event_id_is_400(event_id: str) -> None:
    # Python's \d and int() take every script's digits: "?after=\u0663" was read as after=3.
    async with asgi.lifespan(app_with()) as app:
        job = json.loads((await submit(app, "simulate", {"steps": 1, "delay": 0})).body)
        header = await asgi.request(
            app, job["events_url"], headers=[*A, ("last-event-id", event_id)]
        )
        query = await asgi.request(app, job["events_url"] + "?after=" + quote(event_id), headers=A)
    for result in (header, query):
        assert result.status == 400, event_id
        assert json.loads(result.body)["error"]["type"] == "invalid_event_id"


async def test_checksum_of_generated_data_and_of_an_allow_listed_file(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"sluice" * 400_000)
    async with asgi.lifespan(app_with(progress_checksum_files=f"data={data}")) as app:
        generated = json.loads((await submit(app, "checksum", {"size_mb": 3})).body)
        named = json.loads((await submit(app, "checksum", {"file": "data"})).body)
        missing = json.loads((await submit(app, "checksum", {"file": "passwd"})).body)
        g = sse_events((await asgi.request(app, generated["events_url"], headers=A)).text)
        n = sse_events((await asgi.request(app, named["events_url"], headers=A)).text)
        m = sse_events((await asgi.request(app, missing["events_url"], headers=A)).text)
    block = bytes(range(256)) * (CHUNK // 256)
    assert g[-1]["data"]["result"] == {
        "sha256": hashlib.sha256(block * 3).hexdigest(),
        "bytes": 3 * CHUNK,
    }
    assert [e["data"]["step"] for e in g if e["event"] == "progress"] == [1, 2, 3]
    assert n[-1]["data"]["result"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert m[-1]["event"] == "failed"
    assert "no checksum file named 'passwd'" in m[-1]["data"]["error"]


async def test_seed_progress_exactly_as_the_notes_write_it() -> None:
    async with asgi.lifespan(app_with()) as app:
        result = await asgi.request(app, "/progress")
    frames = [f for f in result.text.split("\n\n") if f and not f.startswith(":")]
    assert len(frames) == 101
    assert frames[0] == 'data: {"progress": 1.0, "step": 1}'
    assert frames[99] == 'data: {"progress": 100.0, "step": 100}'
    assert frames[100] == "event: complete\ndata: Done!"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=6))
def test_resume_after_any_disconnects_gives_every_event_once_in_order(cuts: list[int]) -> None:
    """Leave after a random number of chunks, reconnect with Last-Event-ID, again and again."""

    async def main() -> tuple[list[str], list[str]]:
        async with asgi.lifespan(app_with()) as app:
            job = json.loads((await submit(app, "simulate", {"steps": 25, "delay": 0.004})).body)
            seen: list[str] = []
            last: str | None = None
            for cut in [*cuts, None]:
                headers = [*A, ("last-event-id", last)] if last else A
                result = await asgi.request(
                    app, job["events_url"], headers=headers, leave_after=cut
                )
                for event in sse_events(result.text):
                    seen.append(event["id"])
                    last = event["id"]
                if result.completed:
                    break
            full = await asgi.request(app, job["events_url"], headers=A)
            return seen, [e["id"] for e in sse_events(full.text)]

    seen, everything = asyncio.run(main())
    assert seen == everything
    assert len(everything) == 27  # log, 25 progress, complete


async def test_job_routes_are_rate_limited_per_key() -> None:
    async with asgi.lifespan(app_with(rate_limit="2/minute")) as app:
        codes = [(await submit(app, "simulate", {"steps": 1, "delay": 0})).status for _ in range(3)]
        other = await submit(app, "simulate", {"steps": 1, "delay": 0}, who=B)
    assert codes == [202, 202, 429]
    assert other.status == 202


async def test_the_job_kinds_and_their_params_schemas_are_listed_for_a_key_only() -> None:
    async with asgi.lifespan(app_with()) as app:
        listed = await asgi.request(app, "/jobs/kinds", headers=A)
        anonymous = await asgi.request(app, "/jobs/kinds")
        # "kinds" is a route, not a job id: a job of that name is still nobody's.
        missing = await asgi.request(app, "/jobs/kindz", headers=A)
    assert listed.status == 200
    kinds = {k["name"]: k["params"] for k in json.loads(listed.body)["kinds"]}
    assert {"simulate", "checksum"} <= set(kinds)
    steps = kinds["simulate"]["properties"]["steps"]
    assert steps["type"] == "integer" and "maximum" in steps
    assert anonymous.status == 401
    assert missing.status == 404
