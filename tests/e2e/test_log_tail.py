"""log-tail through nginx: curl -N and an SSE client follow a file while it is written."""

from __future__ import annotations

import json
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple
from urllib.parse import quote

import httpx
import httpx_sse
import pytest

from tests.log_tail.swaps import FOREIGN, leaks
from tests.log_tail.test_routes import HOSTILE
from tests.support.metrics import value, wait_for
from tests.support.procs import Proc, running, start_nginx, start_service

KEY = "sk-e2e-logtail-000000000000000001"
AUTH = {"Authorization": f"Bearer {KEY}"}


class TailStack(NamedTuple):
    nginx: Proc
    service: Proc
    log: Path


@pytest.fixture(scope="module")
def tail_stack(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailStack]:
    folder = tmp_path_factory.mktemp("logs")
    log = folder / "app.log"
    log.write_text("boot\n")
    (folder / "secret").write_text("root:$6$hash\n")
    env = {
        "SLUICE_API_KEYS": KEY,
        "SLUICE_LOG_TAIL_FILES": f"app={log}",
        "SLUICE_LOG_TAIL_POLL_INTERVAL": "0.1",
    }
    service = start_service("log-tail", log_dir, env, workers=1)
    nginx = start_nginx({"log-tail": f"127.0.0.1:{service.port}"}, log_dir)
    with running(nginx, service):
        yield TailStack(nginx, service, log)


def writer(log: Path, lines: list[str], gap: float) -> threading.Thread:
    def run() -> None:
        for line in lines:
            time.sleep(gap)
            with log.open("a") as handle:
                handle.write(line + "\n")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_curl_follows_live_lines(tail_stack: TailStack) -> None:
    nginx, _, log = tail_stack
    proc = subprocess.Popen(
        ["curl", "-sN", "-H", f"Authorization: Bearer {KEY}", f"{nginx.url}/logs/app?lines=1"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    time.sleep(0.3)
    thread = writer(log, [f"curl line {i}" for i in range(5)], 0.1)
    got = [proc.stdout.readline().decode().rstrip("\n") for _ in range(6)]
    proc.kill()
    thread.join()
    assert got[0] in ("boot",) or got[0].startswith(("curl line", "sse line"))
    assert got[-5:] == [f"curl line {i}" for i in range(5)]


def test_sse_client_follows_and_resumes(tail_stack: TailStack) -> None:
    nginx, _, log = tail_stack
    thread = writer(log, [f"sse line {i}" for i in range(6)], 0.1)
    seen = []
    with httpx.Client(timeout=10, headers=AUTH) as client:
        with httpx_sse.connect_sse(client, "GET", f"{nginx.url}/logs/app?lines=0") as source:
            for event in source.iter_sse():
                seen.append((event.id, event.data))
                if len(seen) == 3:
                    break
        thread.join()
        with httpx_sse.connect_sse(
            client, "GET", f"{nginx.url}/logs/app", headers={"Last-Event-ID": seen[-1][0]}
        ) as source:
            rest = []
            for event in source.iter_sse():
                rest.append(event.data)
                if event.data == "sse line 5":
                    break
    assert [d for _, d in seen] == ["sse line 0", "sse line 1", "sse line 2"]
    assert rest == ["sse line 3", "sse line 4", "sse line 5"]


@pytest.mark.parametrize("name", [*HOSTILE, "..%2F..%2Fsecret", "%2e%2e/secret", "app/../secret"])
def test_hostile_names_through_nginx_read_nothing(tail_stack: TailStack, name: str) -> None:
    nginx = tail_stack.nginx
    name = quote(name, safe=string.punctuation)  # only what curl cannot send raw (spaces)
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--path-as-is",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {KEY}",
            f"{nginx.url}/logs/{name}?follow=false",
        ],
        capture_output=True,
        check=False,
        timeout=10,
    )
    body, _, code = out.stdout.decode(errors="replace").rpartition("\n")
    assert code in ("400", "404", "422"), (name, code, body)
    assert "root:" not in body
    assert json.loads(body)["error"]["type"], body  # JSON, nginx's own refusals too


def test_list_through_nginx(tail_stack: TailStack) -> None:
    nginx = tail_stack.nginx
    listed = httpx.get(f"{nginx.url}/logs", headers={**AUTH, "Accept": "application/json"})
    assert listed.json() == {"files": ["app"]}


def lines_of(stream: IO[bytes]) -> tuple[list[str], threading.Thread]:
    """Every line ``stream`` gives, collected by a thread until it closes."""
    lines: list[str] = []

    def run() -> None:
        for raw in stream:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return lines, thread


def test_a_folder_swapped_for_a_symlink_serves_nothing_of_its_target(
    tail_stack: TailStack,
) -> None:
    """The followed file's folder becomes a symlink to a folder with an app.log of its own:
    the curl follower is told ``refused``, nothing of the target reaches it or a backlog,
    the service stays ready and counts the refusal; the real folder back, the file is
    followed again from its first line. (Last in the module: it swaps the shared folder.)"""
    nginx, service, log = tail_stack
    folder = log.parent
    foreign = folder.with_name(folder.name + "-foreign")
    saved = folder.with_name(folder.name + "-saved")
    foreign.mkdir()
    (foreign / "app.log").write_text(FOREIGN * 3)
    curl = subprocess.Popen(
        ["curl", "-sN", "-H", f"Authorization: Bearer {KEY}", f"{nginx.url}/logs/app?lines=1"],
        stdout=subprocess.PIPE,
    )
    assert curl.stdout is not None
    lines, reader = lines_of(curl.stdout)
    try:
        writer(log, ["before the swap"], 0.2).join()
        wait_for(lambda: "before the swap" in lines, 5, what="the follower reads the file")
        folder.rename(saved)
        folder.symlink_to(foreign, target_is_directory=True)
        try:
            refused = "==> app: refused file=app reason=symlink <=="
            wait_for(lambda: refused in lines, 5, what="the follower is told")
            writer(foreign / "app.log", [FOREIGN.strip()] * 3, 0.1).join()
            time.sleep(0.5)  # several polls and wakes with the target growing
            backlog = httpx.get(
                f"{nginx.url}/logs/app?lines=100&follow=false&format=ndjson", headers=AUTH
            )
            ready = httpx.get(f"{service.url}/readyz")
            refusals = value(
                service.url, "sluice_log_tail_refusals_total", file="app", reason="symlink"
            )
        finally:
            folder.unlink()
            saved.rename(folder)
        writer(log, ["after the swap"], 0.1).join()
        wait_for(lambda: "after the swap" in lines, 5, what="the real file followed again")
    finally:
        curl.kill()
        curl.wait(5)
        reader.join(5)
    assert not any(leaks(line) for line in lines)
    assert backlog.status_code == 200 and not leaks(backlog.text)
    assert '"event":"refused"' in backlog.text and '"reason":"symlink"' in backlog.text
    assert ready.status_code == 200
    assert refusals == 1
    again = lines[lines.index(refused) + 1 :]
    assert again[:2] == ["==> app: created file=app <==", "boot"]  # from the first line
    assert again[-1] == "after the swap"
