"""Resumable chat answers through the ASGI app, against a real mock upstream: in memory
(embedded) and in a real Redis, a cut at every point, the bounds that stop an answer nobody
reads, ownership, retention, and the refusals."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from sluice_services.chat_proxy.app import create_app
from sluice_services.chat_proxy.metrics import ANSWERS_UNREAD, RESUMES
from sluice_services.chat_proxy.settings import ChatSettings
from sluice_services.mock_upstream.text import mock_text
from tests.chat_proxy.conftest import CALLER_KEY, UPSTREAM_KEY
from tests.support import asgi
from tests.support.metrics import counted
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio

OTHER_KEY = "sk-test-resume-other-0123456789"
AUTH = ("authorization", f"Bearer {CALLER_KEY}")
OTHER = ("authorization", f"Bearer {OTHER_KEY}")
JSON = ("content-type", "application/json")
RESUMABLE = ("x-sluice-resumable", "1")
MODES = ["memory", "redis"]


def settings(mock: Proc, redis: Proc | None, **overrides: Any) -> ChatSettings:
    values: dict[str, Any] = {
        "api_keys": SecretStr(f"{CALLER_KEY},{OTHER_KEY}"),
        "upstream_base_url": f"{mock.url}/v1",
        "upstream_api_key": SecretStr(UPSTREAM_KEY),
        "upstream_read_timeout": 2.0,
        "redis_url": redis.extra["url"] if redis is not None else None,
        **overrides,
    }
    return ChatSettings(**values)


@asynccontextmanager
async def app_for(mode: str, mock: Proc, redis: Proc, **overrides: Any) -> AsyncIterator[FastAPI]:
    app = create_app(settings(mock, redis if mode == "redis" else None, **overrides))
    async with asgi.lifespan(app):
        yield app


def body(model: str = "mock-gpt", **extra: Any) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello there"}],
            "stream": True,
            **extra,
        }
    ).encode()


async def start(
    app: FastAPI,
    payload: bytes,
    headers: tuple[tuple[str, str], ...] = (AUTH, RESUMABLE),
    **kw: Any,
) -> asgi.Result:
    return await asgi.request(
        app, "/v1/chat/completions", method="POST", headers=[JSON, *headers], body=payload, **kw
    )


async def resume(
    app: FastAPI, path: str, after: int | None = None, auth: tuple[str, str] = AUTH, **kw: Any
) -> asgi.Result:
    headers = [auth] + ([("last-event-id", str(after))] if after is not None else [])
    return await asgi.request(app, path, headers=headers, **kw)


def events(text: str) -> list[tuple[int | None, str]]:
    """Each SSE event's (id, data), comments and hints left out."""
    found = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        if "data" in fields:
            found.append((int(fields["id"]) if "id" in fields else None, fields["data"]))
    return found


def content(datas: list[str]) -> str:
    text = ""
    for data in datas:
        if data != "[DONE]" and not data.startswith('{"error"'):
            choice = json.loads(data)["choices"][0]
            text += choice["delta"].get("content") or ""
    return text


def shapes(datas: list[str]) -> list[Any]:
    """Each event's choices (or ``[DONE]``): the answer, less the ids and times that differ
    from one completion to the next."""
    return [d if d == "[DONE]" else json.loads(d)["choices"] for d in datas]


def gauge(child: Any) -> float:
    (family,) = child.collect()
    return float(family.samples[0].value)


async def seen_by(mock: Proc, request_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{mock.url}/mock/requests/{request_id}")
    found: dict[str, Any] = response.json()
    return found


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", MODES)
async def test_a_resumable_stream_numbers_its_events_and_says_where_to_resume(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for(mode, mock_upstream, redis_server) as app:
        result = await start(app, body())
        assert result.status == 200, result.text
        path = result.headers["x-sluice-resume"]
        assert path.startswith("/v1/chat/completions/ans_") and path.endswith("/events")
        found = events(result.text)
        assert [n for n, _ in found] == list(range(1, len(found) + 1))  # every event an id
        assert found[-1][1] == "[DONE]"
        assert content([d for _, d in found]) == mock_text(20)
        # A reader arriving after the end gets the whole answer, byte for byte.
        again = await resume(app, path)
        assert again.status == 200 and again.headers["x-sluice-resume"] == path
        assert events(again.text) == found


@pytest.mark.parametrize("mode", MODES)
async def test_resuming_after_every_event_gives_exactly_the_rest(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    """Every cut point of an answer (the property, exhaustively): what a client had plus
    what its resume gives is the whole answer, each event once."""
    async with app_for(mode, mock_upstream, redis_server) as app:
        whole = await start(app, body())
        path = whole.headers["x-sluice-resume"]
        full = events(whole.text)
        before = counted(RESUMES.labels("chat-proxy"))
        for cut in range(len(full)):
            rest = await resume(app, path, after=cut)
            assert full[:cut] + events(rest.text) == full, cut
        # ?after= does the same as Last-Event-ID
        query = await asgi.request(app, f"{path}?after=5", headers=[AUTH])
        assert events(query.text) == full[5:]
        # after the last event: the reader has it all, and 204 ends an EventSource for good
        done = await resume(app, path, after=len(full))
        assert done.status == 204
        assert counted(RESUMES.labels("chat-proxy")) - before == len(full) + 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_cut_at_random_points_mid_answer_assembles_every_token_once(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    """Live cuts: the client leaves after a random number of chunks while the answer is
    still being generated, and resumes from the last id it saw, again and again."""
    rng = random.Random(17)
    model = "mock-fault:tokens=60,delay=0.01"
    async with app_for(mode, mock_upstream, redis_server) as app:
        reference = events((await start(app, body(model=model))).text)
        for _ in range(3):
            got: list[tuple[int | None, str]] = []
            first = await start(app, body(model=model), leave_after=rng.randint(1, 20))
            path = first.headers["x-sluice-resume"]
            got += events(first.text)
            while not got or got[-1][1] != "[DONE]":
                part = await resume(app, path, after=got[-1][0], leave_after=rng.randint(1, 25))
                got += events(part.text)
            assert [n for n, _ in got] == list(range(1, len(got) + 1))
            assert shapes([d for _, d in got]) == shapes([d for _, d in reference])
            assert content([d for _, d in got]) == mock_text(60)


@pytest.mark.parametrize("mode", MODES)
async def test_the_generation_goes_on_when_the_client_leaves(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    model = "mock-fault:tokens=30,delay=0.02"
    async with app_for(mode, mock_upstream, redis_server) as app:
        first = await start(app, body(model=model), leave_after=2)
        path = first.headers["x-sluice-resume"]
        await asyncio.sleep(1.2)  # the answer ends meanwhile, nobody reading
        later = await resume(app, path)
    found = events(later.text)
    assert found[-1][1] == "[DONE]"
    assert content([d for _, d in found]) == mock_text(30)


@pytest.mark.parametrize("mode", MODES)
async def test_delete_stops_the_answer_and_cancels_the_upstream_at_once(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    model = "mock-fault:tokens=500,delay=0.05"
    rid = f"resume-delete-{mode}-{time.time_ns()}"
    async with app_for(mode, mock_upstream, redis_server) as app:
        first = await start(
            app, body(model=model), (AUTH, RESUMABLE, ("x-request-id", rid)), leave_after=3
        )
        path = first.headers["x-sluice-resume"]
        answer = path.rsplit("/", 2)[1]
        asked = time.time()
        stopped = await asgi.request(
            app, f"/v1/chat/completions/{answer}", method="DELETE", headers=[AUTH]
        )
        assert stopped.status == 200, stopped.text
        assert json.loads(stopped.body)["status"] == "ended"
        seen = await seen_by(mock_upstream, rid)
        assert seen["end"] == "client_disconnect"
        assert seen["ended_at"] - asked < 0.1, seen["ended_at"] - asked  # within 100 ms
        rest = await resume(app, path)
        last = events(rest.text)[-1]
        assert json.loads(last[1])["error"]["code"] == "answer_cancelled"
        # once ended, a DELETE says so and changes nothing
        again = await asgi.request(
            app, f"/v1/chat/completions/{answer}", method="DELETE", headers=[AUTH]
        )
        assert json.loads(again.body)["status"] == "ended"


@pytest.mark.parametrize("mode", MODES)
async def test_only_the_key_that_started_an_answer_reads_or_stops_it(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for(mode, mock_upstream, redis_server) as app:
        path = (await start(app, body())).headers["x-sluice-resume"]
        answer = path.rsplit("/", 2)[1]
        for method, target in (("GET", path), ("DELETE", f"/v1/chat/completions/{answer}")):
            refused = await asgi.request(app, target, method=method, headers=[OTHER])
            assert refused.status == 404, refused.text
            assert json.loads(refused.body)["error"]["code"] == "answer_not_found"
        for bad in ("ans_nope", "x" * 300, "ans_" + "A" * 23 + "%2F"):
            missing = await asgi.request(app, f"/v1/chat/completions/{bad}/events", headers=[AUTH])
            assert missing.status == 404, bad
        assert (await asgi.request(app, path)).status == 401  # no key at all


@pytest.mark.parametrize("mode", MODES)
async def test_bad_positions_and_bad_flags_are_clear_400s(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for(mode, mock_upstream, redis_server) as app:
        whole = await start(app, body())
        path = whole.headers["x-sluice-resume"]
        last = len(events(whole.text))
        for after, code in (
            ("abc", "invalid_event_id"),
            ("-1", "invalid_event_id"),
            ("٣", "invalid_event_id"),
            ("9" * 30, "invalid_event_id"),
        ):
            bad = await asgi.request(app, path, headers=[AUTH, ("last-event-id", after)])
            assert bad.status == 400, after
            assert json.loads(bad.body)["error"]["code"] == code
        beyond = await asgi.request(app, f"{path}?after={last + 1}", headers=[AUTH])
        assert beyond.status == 204  # ended: nothing more will come after any position
        flag = await start(app, body(), (AUTH, ("x-sluice-resumable", "maybe")))
        assert flag.status == 400
        assert json.loads(flag.body)["error"]["param"] == "X-Sluice-Resumable"
        option = await start(app, body(stream_options={"resumable": "yes"}), (AUTH,))
        assert option.status == 400
        assert json.loads(option.body)["error"]["param"] == "stream_options.resumable"
        other_api = await asgi.request(
            app,
            "/v1/completions",
            method="POST",
            headers=[AUTH, JSON, RESUMABLE],
            body=json.dumps({"model": "mock-gpt", "prompt": "hi", "stream": True}).encode(),
        )
        assert other_api.status == 400
        assert json.loads(other_api.body)["error"]["code"] == "unsupported_parameter"


@pytest.mark.parametrize("mode", MODES)
async def test_past_a_live_answers_last_event_is_a_400_not_an_endless_wait(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for(mode, mock_upstream, redis_server) as app:
        first = await start(app, body(model="mock-fault:tokens=200,delay=0.05"), leave_after=1)
        path = first.headers["x-sluice-resume"]
        beyond = await asgi.request(app, path, headers=[AUTH, ("last-event-id", "100000")])
        assert beyond.status == 400
        answer = path.rsplit("/", 2)[1]
        await asgi.request(app, f"/v1/chat/completions/{answer}", method="DELETE", headers=[AUTH])


async def test_stream_options_resumable_turns_it_on_and_the_header_turns_the_default_off(
    mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for("memory", mock_upstream, redis_server) as app:
        on = await start(app, body(stream_options={"resumable": True}), (AUTH,))
        assert "x-sluice-resume" in on.headers
        assert events(on.text)[0][0] == 1
    async with app_for("memory", mock_upstream, redis_server, chat_resumable=True) as app:
        default = await start(app, body(), (AUTH,))
        assert "x-sluice-resume" in default.headers
        off = await start(app, body(), (AUTH, ("x-sluice-resumable", "0")))
        assert "x-sluice-resume" not in off.headers
        assert all(n is None for n, _ in events(off.text))  # today's pass-through, untouched


@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_nobody_reads_is_stopped_after_the_idle_time(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    rid = f"resume-idle-{mode}-{time.time_ns()}"
    async with app_for(mode, mock_upstream, redis_server, chat_resume_idle=2.0) as app:
        first = await start(
            app,
            body(model="mock-fault:tokens=400,delay=0.05"),
            (AUTH, RESUMABLE, ("x-request-id", rid)),
            leave_after=2,
        )
        path = first.headers["x-sluice-resume"]
        left = time.monotonic()

        unread_seen = False

        async def upstream_cancelled() -> bool:
            nonlocal unread_seen
            unread_seen |= gauge(ANSWERS_UNREAD.labels("chat-proxy")) > 0
            return (await seen_by(mock_upstream, rid)).get("end") == "client_disconnect"

        await wait_for(upstream_cancelled, 10)
        took = time.monotonic() - left
        rest = await resume(app, path)
        assert json.loads(events(rest.text)[-1][1])["error"]["code"] == "answer_abandoned"
        assert unread_seen  # the gauge counted it while nobody read it
        assert 2.0 <= took < 5.0, took  # the idle time, plus at most its half and a check
        assert gauge(ANSWERS_UNREAD.labels("chat-proxy")) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_past_its_maximum_age_is_stopped(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for(mode, mock_upstream, redis_server, chat_resume_max_age=1.0) as app:
        result = await start(app, body(model="mock-fault:tokens=400,delay=0.02"))
    last = json.loads(events(result.text)[-1][1])
    assert last["error"]["code"] == "answer_too_old"
    assert 30 < len(events(result.text)) < 200


@pytest.mark.parametrize("mode", MODES)
async def test_an_answer_is_deleted_its_retention_after_its_end(
    mode: str, mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for(mode, mock_upstream, redis_server, chat_resume_retention=1) as app:
        path = (await start(app, body())).headers["x-sluice-resume"]
        assert (await resume(app, path)).status == 200
        await asyncio.sleep(1.6)
        gone = await resume(app, path)
        assert gone.status == 404, gone.text


async def test_an_upstream_failure_mid_answer_is_recorded_as_its_end(
    mock_upstream: Proc, redis_server: Proc
) -> None:
    async with app_for("redis", mock_upstream, redis_server) as app:
        result = await start(app, body(model="mock-fault:reset_after=3"))
        path = result.headers["x-sluice-resume"]
        again = await resume(app, path)
    last = json.loads(events(result.text)[-1][1])
    assert last["error"]["code"] == "upstream_reset"
    assert events(again.text) == events(result.text)  # the same end for every reader


async def test_two_instances_sharing_redis_resume_and_stop_each_others_answers(
    mock_upstream: Proc, redis_server: Proc
) -> None:
    """Two apps (each its own Redis client, follower and stop listener), as two replicas:
    an answer started on one is read and stopped through the other."""
    rid = f"resume-two-{time.time_ns()}"
    async with (
        app_for("redis", mock_upstream, redis_server) as one,
        app_for("redis", mock_upstream, redis_server) as two,
    ):
        first = await start(
            one,
            body(model="mock-fault:tokens=300,delay=0.03"),
            (AUTH, RESUMABLE, ("x-request-id", rid)),
            leave_after=3,
        )
        path = first.headers["x-sluice-resume"]
        had = events(first.text)
        part = await resume(two, path, after=had[-1][0], leave_after=5)
        got = had + events(part.text)
        assert [n for n, _ in got] == list(range(1, len(got) + 1))
        answer = path.rsplit("/", 2)[1]
        asked = time.time()
        stopped = await asgi.request(
            two, f"/v1/chat/completions/{answer}", method="DELETE", headers=[AUTH]
        )
        assert json.loads(stopped.body)["status"] == "ended"
        seen = await seen_by(mock_upstream, rid)
        assert seen["end"] == "client_disconnect"
        assert seen["ended_at"] - asked < 0.1, seen["ended_at"] - asked
        rest = await resume(two, path, after=got[-1][0])
        assert json.loads(events(rest.text)[-1][1])["error"]["code"] == "answer_cancelled"


async def test_a_generation_holds_its_keys_stream_slot_until_it_ends(
    mock_upstream: Proc, redis_server: Proc
) -> None:
    """Clients that start answers and leave at once still have them running: each counts
    as one of the key's streams (the cap cannot be walked around by leaving)."""
    slow = body(model="mock-fault:tokens=400,delay=0.05")
    async with app_for("memory", mock_upstream, redis_server, max_streams_per_key=2) as app:
        paths = []
        for _ in range(2):
            started = await start(app, slow, leave_after=1)
            assert started.status == 200
            paths.append(started.headers["x-sluice-resume"])
        third = await start(app, slow, leave_after=1)
        assert third.status == 429, third.text
        assert json.loads(third.body)["error"]["type"] == "too_many_streams"
        answer = paths[0].rsplit("/", 2)[1]
        await asgi.request(app, f"/v1/chat/completions/{answer}", method="DELETE", headers=[AUTH])
        fourth = await start(app, slow, leave_after=1)
        assert fourth.status == 200  # the stopped answer gave its slot back
        for path in (paths[1], fourth.headers["x-sluice-resume"]):
            await asgi.request(app, path.removesuffix("/events"), method="DELETE", headers=[AUTH])


async def test_last_event_id_wins_over_after_in_the_url(
    mock_upstream: Proc, redis_server: Proc
) -> None:
    # An EventSource opened on ?after=2 reconnects to that URL with the id it saw last.
    async with app_for("memory", mock_upstream, redis_server) as app:
        whole = await start(app, body())
        path = whole.headers["x-sluice-resume"]
        got = await asgi.request(app, f"{path}?after=2", headers=[AUTH, ("last-event-id", "7")])
    assert events(got.text) == events(whole.text)[7:]


async def test_a_stop_asked_while_the_message_is_missed_still_stops_the_answer(
    mock_upstream: Proc, redis_server: Proc
) -> None:
    """A DELETE's message can be missed (a listener reconnecting); its mark in Redis is
    found at the writer's next look."""
    async with app_for("redis", mock_upstream, redis_server) as app:
        first = await start(app, body(model="mock-fault:tokens=400,delay=0.05"), leave_after=2)
        path = first.headers["x-sluice-resume"]
        answer = path.rsplit("/", 2)[1]
        answers = app.state.runtime.resources[1].__self__
        await answers.store.redis.set(answers.store.stop_key(answer), b"1")  # no message
        rest = await resume(app, path, timeout=5)
    assert json.loads(events(rest.text)[-1][1])["error"]["code"] == "answer_cancelled"


@pytest.mark.parametrize(
    ("mode", "asked", "policy"),
    [
        ("redis", True, "reconnect"),  # resumes on another worker: a hint
        ("redis", False, "finish"),  # an SDK made resumable by the route default
        ("memory", True, "finish"),  # no other worker has the answer
    ],
)
async def test_a_reader_is_drained_with_a_hint_only_where_it_can_resume(
    mode: str,
    asked: bool,
    policy: str,
    mock_upstream: Proc,
    redis_server: Proc,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sluice.admission
    from sluice.streaming import StreamResponse

    policies: list[str] = []
    real = StreamResponse

    def recording(*args: Any, **kwargs: Any) -> Any:
        policies.append(kwargs["drain"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sluice.admission, "StreamResponse", recording)
    headers = (AUTH, RESUMABLE) if asked else (AUTH,)
    async with app_for(mode, mock_upstream, redis_server, chat_resumable=True) as app:
        result = await start(app, body(), headers)
        assert "x-sluice-resume" in result.headers
        again = await resume(app, result.headers["x-sluice-resume"])
        assert again.status == 200
    assert policies[0] == policy
    assert policies[1] == ("reconnect" if mode == "redis" else "finish")  # GET …/events


def test_an_upstreams_own_ids_are_taken_out_and_ours_is_the_events_last_line() -> None:
    from sluice_services.chat_proxy.resumable import _without_id, with_id

    for hostile in (b"id: 99\ndata: {}\n\n", b"data: {}\nid\n\n", b"id:\ndata: {}\nid: x\n\n"):
        clean = _without_id(hostile)
        assert b"id" not in clean.replace(b"data", b""), clean
        assert with_id(7, clean).endswith(b"id: 7\n\n")
    assert _without_id(b'data: {"idea": 1}\n\n') == b'data: {"idea": 1}\n\n'
