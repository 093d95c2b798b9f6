"""`make run`'s own Procfile under honcho, on free ports: the stack a new user gets.

One boot serves every check (it is the suite's slowest setup): the README's examples, a
compose ``.env`` beside it that must not be read, a setting scoped to chat-proxy, Redis
killed under it, and Ctrl-C with streams open that must be drained, not cut.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from sluice.procfs import children, stat
from tests.support.paths import ROOT
from tests.support.procs import READY, start_local_stack

DEMO_DRAIN_WINDOW = 9  # longer than honcho's own 5 s before SIGKILL


def readme_block(section: str, language: str) -> str:
    """The first ```language block after the README heading ``section``."""
    readme = (ROOT / "README.md").read_text()
    rest = readme[readme.index(f"\n{section}\n") :]
    start = rest.index(f"```{language}\n") + len(language) + 4
    return rest[start : rest.index("```", start)]


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def command_of(pid: int) -> str:
    info = stat(pid)
    return info.comm if info is not None else ""


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def follow(url: str, key: str, seen: list[str]) -> None:
    """Read an SSE stream to its end; ``seen`` gets its text."""
    text = ""
    try:
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        with httpx.stream("GET", url, headers=headers, timeout=30) as response:
            for chunk in response.iter_text():
                text += chunk
    except httpx.HTTPError as exc:
        text += f"\n<cut: {type(exc).__name__}>"
    seen.append(text)


def test_procfile_starts_the_stack_and_ctrl_c_stops_it(tmp_path: Path, log_dir: Path) -> None:
    # compose's .env, made as the README's compose steps make it: make run must not read it
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    with (tmp_path / ".env").open("a") as env_file:
        env_file.write("SLUICE_API_KEYS=sk-change-me-before-use\nSLUICE_DEV_DEMO_TOY_DELAY=30\n")
    scoped = {
        "SLUICE_CHAT_PROXY__PUBLIC_ROUTES": "",  # the README's advice, for chat-proxy only
        "SLUICE_DEMO__DRAIN_WINDOW": str(DEMO_DRAIN_WINDOW),
    }
    stack = start_local_stack(tmp_path, log_dir, scoped)
    key, base, printed = stack.key, stack.base, stack.printed
    streams: list[threading.Thread] = []
    seen: list[str] = []
    try:
        # The moment it says it is ready, every service answers through nginx: no 502 while
        # a worker boots (each route at once, no retry), and the line has the URL and key.
        for route in ("/dummy-counter", "/chat-stream?prompt=hi", "/progress", "/logs"):
            auth = {"Authorization": f"Bearer {key}"}
            with httpx.stream("GET", f"{base}{route}", headers=auth, timeout=10) as answer:
                assert answer.status_code == 200, (route, answer.status_code, answer.read())
        ready = next(line for line in printed.splitlines() if line.startswith(READY))
        assert base in ready and key in ready, ready
        boot = printed.index(READY)
        assert '"msg": "service started"' not in printed[:boot]  # the logs come below it
        assert '"msg": "service started"' in printed[boot:]
        assert "(used by chat-proxy, progress)" in printed
        assert "Redis: redis://127.0.0.1:" in printed
        with httpx.stream("GET", f"{base}/toy-stream", timeout=10) as response:
            lines = response.iter_lines()
            assert next(lines) == "Starting stream..."
            started = time.monotonic()
            next(lines)
            assert time.monotonic() - started < 5  # .env's 30 s delay was not read
        token = httpx.post(
            f"{base}/auth/stream-token",
            headers={"Authorization": f"Bearer {key}"},
            json={"path": "/dummy-events"},
        )
        assert token.status_code == 200
        refused = httpx.get(f"{base}/toy-stream", headers={"Authorization": "Bearer no"})
        assert refused.status_code == 401
        placeholder = {"Authorization": "Bearer sk-change-me-before-use"}
        assert httpx.get(f"{base}/v1/models", headers=placeholder).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        # SLUICE_CHAT_PROXY__PUBLIC_ROUTES= closed chat-proxy's public route, and only its:
        # the mock upstream behind it still answers chat-proxy (no 502 upstream_401)
        closed = httpx.get(f"{base}/chat-stream?prompt=hi", timeout=10)
        assert closed.status_code == 401, closed.text
        chat = httpx.get(f"{base}/chat-stream?prompt=hi", headers=auth, timeout=10)
        assert chat.status_code == 200, chat.text
        assert chat.text.startswith("Sluice streams tokens")
        assert httpx.get(f"{base}/dummy-counter", timeout=10).status_code == 200  # demo: open
        # The README's openai-SDK snippet as written, but for this stack's port and key file.
        snippet = readme_block("## chat-proxy", "python")
        assert "http://127.0.0.1:8080/v1" in snippet and '".run/dev-api-key"' in snippet
        code = snippet.replace("http://127.0.0.1:8080", base).replace(
            '".run/dev-api-key"', repr(str(tmp_path / "dev-api-key"))
        )
        sdk = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert sdk.returncode == 0, sdk.stderr
        assert sdk.stdout + "\n" == chat.text  # the same model's completion: every token, in order
        job = httpx.post(
            f"{base}/jobs",
            headers=auth,
            timeout=10,
            json={"kind": "simulate", "params": {"steps": 3, "delay": 0.05}},
        )
        assert job.status_code == 202
        events = httpx.get(f"{base}{job.json()['events_url']}", headers=auth, timeout=20).text
        assert "event: complete" in events
        # The README's examples, as deploy/smoke.sh (and `make compose-smoke`) runs them.
        smoke = subprocess.run(
            [str(ROOT / "deploy" / "smoke.sh"), base],
            env={**os.environ, "SLUICE_SMOKE_KEY": key},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        # log-tail follows the stack's own nginx access log: our requests appear live.
        with httpx.stream("GET", f"{base}/logs/nginx?lines=0", headers=auth, timeout=10) as tail:
            lines = tail.iter_lines()
            marker = f"/toy-stream-marker-{time.time_ns()}"
            httpx.get(f"{base}{marker}")
            assert any(marker in next(lines) for _ in range(5))
        # Redis dies: the stack stays up, progress says it is unready, Redis comes back.
        progress = f"http://127.0.0.1:{stack.env['SLUICE_DEV_PROGRESS_PORT']}/readyz"
        redis = [p for p in descendants(stack.proc.pid) if command_of(p) == "redis-server"]
        assert len(redis) == 1, redis
        os.kill(redis[0], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while status(progress) != 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(progress) == 503
        assert stack.proc.popen.poll() is None
        assert httpx.get(f"{base}/dummy-counter", timeout=10).status_code == 200
        deadline = time.monotonic() + 20
        while status(progress) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status(progress) == 200, "progress did not become ready after Redis came back"
        job = httpx.post(
            f"{base}/jobs",
            headers=auth,
            timeout=10,
            json={"kind": "simulate", "params": {"steps": 2, "delay": 0.05}},
        )
        assert job.status_code == 202, job.text
        events = httpx.get(f"{base}{job.json()['events_url']}", headers=auth, timeout=30).text
        assert "event: complete" in events  # the progress worker is back at work too
        # Streams open at Ctrl-C, through nginx and straight to demo: each must be drained
        # (its reconnect hint) within demo's 9 s window, not killed at honcho's 5 s.
        demo = f"http://127.0.0.1:{stack.env['SLUICE_DEV_DEMO_PORT']}"
        for url in [f"{base}/dummy-events"] * 6 + [f"{demo}/dummy-events"] * 2:
            streams.append(threading.Thread(target=follow, args=(url, key, seen), daemon=True))
            streams[-1].start()
        time.sleep(2.5)  # every stream is open and has had an event
    finally:
        started = time.monotonic()
        exit_code = stack.stop()  # SIGINT, as Ctrl-C
    took = time.monotonic() - started
    for thread in streams:
        thread.join(5)
    assert len(seen) == 8
    for text in seen:
        assert '"time":' in text, text  # it was streaming (update, alert or info events)
        assert "event: reconnect" in text, text
        assert "<cut" not in text, text
    # Everything stopped by itself, before honcho's SIGKILL (the longest graceful timeout,
    # demo's window + 5 s, plus 5 s): on a loaded 2-core machine a drain's tail takes time.
    assert took < (DEMO_DRAIN_WINDOW + 5) + 5, took
    assert exit_code is not None
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == [], "processes outlived Ctrl-C"
