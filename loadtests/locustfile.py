"""Sluice load tests: what matters for streams, not just time to headers.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080          (web UI)
    make loadtest                                                          (bounded, headless)

Users: chat (streamed completions: TTFT, inter-token gaps, stream time and bytes),
resumable chat (a reconnect storm on resumable answers: every token exactly once),
progress (a reconnect storm: jobs watched through random disconnects, resumed with
Last-Event-ID, every event checked exactly once), logs (log-tail followers) and events
(endless SSE: a stream that ends without a reconnect hint is a lost stream).

Custom metrics appear as request types STREAM (ttft, inter-token, stream) and CHECK
(lost events, lost streams). With LOADTEST_RESTARTS=N the run also sends N rolling
restarts (SIGHUP) to the local gunicorn masters: drain under load. Thresholds
(LOADTEST_MAX_FAIL_RATIO, LOADTEST_TTFT_P99_MS) and any lost event or stream make the
process exit non-zero.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import HttpUser, between, events, task
from locust.env import Environment
from processes import gunicorn_masters

ROOT = Path(__file__).resolve().parent.parent
KEY = os.environ.get("SLUICE_LOADTEST_KEY") or (
    (ROOT / ".run" / "dev-api-key").read_text().strip()
    if (ROOT / ".run" / "dev-api-key").exists()
    else ""
)
AUTH = {"Authorization": f"Bearer {KEY}"}


def report(
    env: Environment,
    kind: str,
    name: str,
    ms: float,
    length: int = 0,
    error: Exception | None = None,
) -> None:
    env.events.request.fire(
        request_type=kind,
        name=name,
        response_time=ms,
        response_length=length,
        exception=error,
        context={},
    )


def refused_while_draining(env: Environment, response: Any) -> bool:
    """A 503 with Retry-After is the drain's "come back shortly", not a failure: count it,
    wait as told, and let the caller retry."""
    if response.status_code == 503 and "Retry-After" in response.headers:
        response.success()
        report(env, "CHECK", "refused while draining", 0)
        gevent.sleep(min(2.0, float(response.headers["Retry-After"])))
        return True
    return False


def usable(env: Environment, response: Any) -> bool:
    """Settle a streamed response's verdict: True to read it, False to let it go (a drain's
    refusal, counted and waited out, or a failure, recorded)."""
    if refused_while_draining(env, response):
        return False
    if response.status_code != 200:
        response.failure(f"status {response.status_code}")
        return False
    response.success()
    return True


def sse_events(lines: Any) -> Any:
    """(event, id, data, retry) from an iterator of SSE lines."""
    event: dict[str, str] = {}
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            event[name] = value


class ChatUser(HttpUser):
    weight = 3
    wait_time = between(0.1, 0.5)

    @task
    def streamed_completion(self) -> None:
        body = {
            "model": "mock-fault:tokens=30,delay=0.02",
            "stream": True,
            "messages": [{"role": "user", "content": "load test"}],
        }
        started = time.perf_counter()
        last = None
        size = 0
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=AUTH,
            stream=True,
            name="/v1/chat/completions",
            catch_response=True,
        ) as response:
            if not usable(self.environment, response):
                return
            for line in response.iter_lines():
                size += len(line)
                if not line.startswith(b"data: {") or b'"content":"' not in line:
                    continue
                now = time.perf_counter()
                if last is None:
                    report(self.environment, "STREAM", "chat ttft", (now - started) * 1000)
                else:
                    report(self.environment, "STREAM", "chat inter-token", (now - last) * 1000)
                last = now
        report(
            self.environment, "STREAM", "chat stream", (time.perf_counter() - started) * 1000, size
        )


class ResumableChatUser(HttpUser):
    """A reconnect storm on chat answers: each resumable answer read through random
    disconnects, resumed with Last-Event-ID on its resume path (any worker, any replica),
    every token checked exactly once against a reader's copy after the end."""

    weight = 2
    wait_time = between(0.2, 0.8)

    @task
    def resume_through_disconnects(self) -> None:
        body = {
            "model": "mock-fault:tokens=40,delay=0.02",
            "stream": True,
            "messages": [{"role": "user", "content": "load test"}],
        }
        seen: list[tuple[str, str]] = []  # (id, data)
        path = None
        last = None
        ended = False
        for _ in range(50):
            leave_after = random.randint(1, 15)
            if path is None:  # the start (a drain's refusal: started again, counted)
                request = self.client.post(
                    "/v1/chat/completions",
                    json=body,
                    headers={**AUTH, "X-Sluice-Resumable": "1"},
                    stream=True,
                    name="/v1/chat/completions (resumable)",
                    catch_response=True,
                )
            else:
                headers = {**AUTH, **({"Last-Event-ID": last} if last else {})}
                request = self.client.get(
                    path,
                    headers=headers,
                    stream=True,
                    name="/v1/chat/completions/{id}/events",
                    timeout=30,
                    catch_response=True,
                )
            with request as response:
                if not usable(self.environment, response):
                    continue
                path = path or response.headers["X-Sluice-Resume"]
                for event in sse_events(response.iter_lines()):
                    if "id" not in event:
                        continue  # a drain's reconnect hint: resume
                    seen.append((event["id"], event.get("data", "")))
                    last = event["id"]
                    if event.get("data") == "[DONE]" or '"error"' in event.get("data", ""):
                        ended = True
                        break
                    if len(seen) % leave_after == 0:
                        break  # the client drops: a phone changing networks, a closed lid
            if ended:
                break
        if path is None:
            return
        expected: list[tuple[str, str]] = []
        for _ in range(10):  # the whole answer, as a reader after its end gets it
            with self.client.get(
                path,
                headers=AUTH,
                name="/v1/chat/completions/{id}/events (full)",
                timeout=30,
                catch_response=True,
            ) as full:
                if not usable(self.environment, full):
                    continue
                copy = list(sse_events(full.text.split("\n")))
            expected = [(e["id"], e.get("data", "")) for e in copy if "id" in e]
            if expected and expected[-1][1] == "[DONE]":
                break
        numbers = [int(n) for n, _ in seen]
        # An end is [DONE] or an error event: the upstream's own (the mock is restarted too)
        # is the answer as it was, but one of Sluice's (a worker that exited mid-answer)
        # means tokens were lost.
        end = expected[-1][1] if expected else ""
        ended = end == "[DONE]" or (end.startswith('{"error"') and "worker_exiting" not in end)
        lost = seen != expected or numbers != list(range(1, len(numbers) + 1)) or not ended
        if ended and end != "[DONE]":
            report(self.environment, "CHECK", "chat answers ended by an upstream error", 0)
        report(
            self.environment,
            "CHECK",
            "chat lost tokens",
            0,
            len(seen),
            AssertionError(
                f"resumed {len(seen)} events, the answer has {len(expected)}, ending "
                f"{(expected[-1][1] if expected else '')[:160]}"
            )
            if lost
            else None,
        )


class ProgressUser(HttpUser):
    """A reconnect storm: every job watched through random disconnects."""

    weight = 2
    wait_time = between(0.2, 1.0)

    @task
    def watch_with_reconnects(self) -> None:
        created = self.client.post(  # a POST racing a closing keep-alive may see 502: counted
            "/jobs",
            headers=AUTH,
            name="/jobs",
            json={"kind": "simulate", "params": {"steps": 20, "delay": 0.05}},
        )
        if created.status_code != 202:
            return
        url = created.json()["events_url"]
        seen: list[str] = []
        last = None
        for _ in range(50):
            headers = {**AUTH, **({"Last-Event-ID": last} if last else {})}
            leave_after = random.randint(1, 8)
            done = False
            with self.client.get(
                url,
                headers=headers,
                stream=True,
                name="/jobs/{id}/events",
                timeout=30,
                catch_response=True,
            ) as response:
                if not usable(self.environment, response):
                    continue
                for event in sse_events(response.iter_lines()):
                    if "id" not in event:
                        continue
                    seen.append(event["id"])
                    last = event["id"]
                    if event.get("event") in ("complete", "failed", "cancelled"):
                        done = True
                        break
                    if len(seen) % leave_after == 0:
                        break  # the client drops: a flaky network, a tab put to sleep
            if done:
                break
        expected: list[str] = []
        for _ in range(10):  # the reference copy, retried through a drain like any client
            with self.client.get(
                url, headers=AUTH, name="/jobs/{id}/events (full)", timeout=30, catch_response=True
            ) as full:
                if not usable(self.environment, full):
                    continue
                copy = list(sse_events(full.text.split("\n")))
            if not any(e.get("event") in ("complete", "failed", "cancelled") for e in copy):
                continue  # a drain ended the copy early (a reconnect hint): fetch it again
            expected = [e["id"] for e in copy if "id" in e]
            break
        lost = seen != expected
        report(
            self.environment,
            "CHECK",
            "progress lost events",
            0,
            len(seen),
            AssertionError(f"resumed {len(seen)} events, job has {len(expected)}")
            if lost
            else None,
        )


class LogFollower(HttpUser):
    weight = 1
    wait_time = between(0.5, 1.0)

    @task
    def follow(self) -> None:
        started = time.perf_counter()
        lines = 0
        with self.client.get(
            "/logs/nginx?lines=20",
            headers=AUTH,
            stream=True,
            name="/logs/{name}",
            timeout=(5, 3),  # a quiet file is normal: 3 s without a line ends the follow
            catch_response=True,
        ) as response:
            if not usable(self.environment, response):
                return
            deadline = time.monotonic() + 3
            try:
                for _ in response.iter_lines():
                    lines += 1
                    if time.monotonic() > deadline:
                        break
            except requests.exceptions.ChunkedEncodingError:
                # A drain cuts a text follow (plain text has no reconnect hint, and a clean
                # end would look like the whole file): the follower reconnects, as tail -F.
                report(self.environment, "CHECK", "log follow cut by a drain", 0)
            except requests.exceptions.ConnectionError:
                pass  # read timeout on a quiet file
        report(
            self.environment, "STREAM", "log follow", (time.perf_counter() - started) * 1000, lines
        )


class EventsUser(HttpUser):
    """Endless SSE: ends only by the client, or by a drain's reconnect hint."""

    weight = 1
    wait_time = between(0.2, 0.5)

    @task
    def listen(self) -> None:
        hint = left = False
        received = 0
        leave_at = time.monotonic() + random.uniform(2, 5)
        with self.client.get(
            "/dummy-events", stream=True, name="/dummy-events", timeout=30, catch_response=True
        ) as response:
            if not usable(self.environment, response):
                return
            for event in sse_events(response.iter_lines()):
                received += 1
                if event.get("event") == "reconnect":
                    hint = True
                    report(self.environment, "CHECK", "events reconnect hints", 0)
                if time.monotonic() > leave_at:
                    left = True  # the client left: not a lost stream
                    break
        lost = not (hint or left)
        report(
            self.environment,
            "CHECK",
            "events lost streams",
            0,
            received,
            AssertionError("the stream ended without a reconnect hint") if lost else None,
        )


@events.test_start.add_listener
def rolling_restarts(environment: Environment, **_: Any) -> None:
    count = int(os.environ.get("LOADTEST_RESTARTS", "0"))
    if not count:
        return

    def restart() -> None:
        for _ in range(count):
            gevent.sleep(float(os.environ.get("LOADTEST_RESTART_EVERY", "5")))
            for pid in gunicorn_masters():
                os.kill(pid, signal.SIGHUP)  # new workers, old ones drain
            report(environment, "CHECK", "rolling restart", 0)

    gevent.spawn(restart)


@events.quitting.add_listener
def thresholds(environment: Environment, **_: Any) -> None:
    stats = environment.stats
    problems = []
    max_fail = float(os.environ.get("LOADTEST_MAX_FAIL_RATIO", "0.01"))
    if stats.total.fail_ratio > max_fail:
        problems.append(f"failure ratio {stats.total.fail_ratio:.3f} > {max_fail}")
        limited = sum(e.occurrences for e in stats.errors.values() if "429" in str(e.error))
        if limited > stats.total.num_failures / 2:
            problems.append(
                "mostly 429: the stack's own rate limits; for a load test start it "
                "with SLUICE_RATE_LIMIT=100000/minute SLUICE_MAX_STREAMS_PER_KEY=1000"
            )
    ttft = stats.get("chat ttft", "STREAM")
    limit = float(os.environ.get("LOADTEST_TTFT_P99_MS", "2000"))
    if ttft.num_requests and ttft.get_response_time_percentile(0.99) > limit:
        problems.append(f"chat TTFT p99 {ttft.get_response_time_percentile(0.99)} ms > {limit}")
    runner = environment.runner
    if runner is not None and runner.exceptions:
        problems.append(
            f"{len(runner.exceptions)} task errors: {next(iter(runner.exceptions.values()))['msg']}"
        )
    for name in ("progress lost events", "chat lost tokens", "events lost streams"):
        lost = stats.get(name, "CHECK").num_failures
        if lost:
            problems.append(f"{name}: {lost}")
    failures = sorted(
        ((e.occurrences, f"{e.method} {e.name}: {e.error}") for e in stats.errors.values()),
        reverse=True,
    )[:5]
    summary = {
        "problems": problems,
        "requests": stats.total.num_requests,
        "failures": stats.total.num_failures,
        "top_failures": failures,
        "ttft_p99_ms": ttft.get_response_time_percentile(0.99) if ttft.num_requests else None,
    }
    print("loadtest verdict: " + json.dumps(summary))
    # The thresholds decide, not locust's "any failure": a drain's 503s are expected.
    environment.process_exit_code = 1 if problems else 0
