"""log-tail through nginx: curl -N and an SSE client follow a file while it is written."""

from __future__ import annotations

import string
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import httpx_sse
import pytest

from tests.log_tail.test_routes import HOSTILE
from tests.support.procs import Proc, running, start_nginx, start_service

KEY = "sk-e2e-logtail-000000000000000001"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tail_stack(
    log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proc, Path]]:
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
        yield nginx, log


def writer(log: Path, lines: list[str], gap: float) -> threading.Thread:
    def run() -> None:
        for line in lines:
            time.sleep(gap)
            with log.open("a") as handle:
                handle.write(line + "\n")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_curl_follows_live_lines(tail_stack: tuple[Proc, Path]) -> None:
    nginx, log = tail_stack
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


def test_sse_client_follows_and_resumes(tail_stack: tuple[Proc, Path]) -> None:
    nginx, log = tail_stack
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
def test_hostile_names_through_nginx_read_nothing(tail_stack: tuple[Proc, Path], name: str) -> None:
    nginx, _ = tail_stack
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


def test_list_through_nginx(tail_stack: tuple[Proc, Path]) -> None:
    nginx, _ = tail_stack
    listed = httpx.get(f"{nginx.url}/logs", headers={**AUTH, "Accept": "application/json"})
    assert listed.json() == {"files": ["app"]}
