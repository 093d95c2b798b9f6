"""log-tail through its ASGI app: formats, options, resume, and hostile names."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from sluice_services.log_tail.app import create_app
from sluice_services.log_tail.settings import LogTailSettings
from tests.support import asgi

pytestmark = pytest.mark.anyio

KEY = "sk-test-logtail-00000000000000000"
AUTH = [("authorization", f"Bearer {KEY}")]

# Names a hostile caller might try; none is a configured name, so none may read anything.
HOSTILE = [
    "..",
    "../app",
    "..%2Fapp",
    "%2e%2e",
    "%2e%2e%2fetc%2fpasswd",
    "..%252Fetc",
    "%2Fetc%2Fpasswd",
    "etc%2Fpasswd",
    "app%00",
    "app%00.log",
    "%00",
    "app.log",
    "APP",
    "app ",
    "%20app",
    "app%20",
    "~root",
    "%7Eroot",
    "app;ls",
    "app%3Bid",
    "app|id",
    "app%7Cid",
    "$(id)",
    "%24%28id%29",
    "`id`",
    "app\\..\\secret",
    "app%5C..%5Csecret",
    "a" * 300,
    ".",
    "%2e",
    "app%0d%0aX-Injected:1",
    "app%0aid",
    "%u002e%u002e",
    "..;",
    "secret",
    "proc%2Fself%2Fenviron",
    "%c0%ae%c0%ae",
    "app%252e%252e",
]


def app_with(tmp_path: Path, **overrides: Any) -> Any:
    log = tmp_path / "app.log"
    if not log.exists():
        log.write_text("".join(f"{i} {'error' if i % 3 == 0 else 'ok'}\n" for i in range(30)))
    (tmp_path / "secret").write_text("root:$6$hash\n")
    values: dict[str, Any] = {
        "api_keys": SecretStr(KEY),
        "log_tail_files": f"app={log}",
        "log_tail_poll_interval": 0.05,
        "dev_log_tail_seed_delay": 0.001,
        **overrides,
    }
    return create_app(LogTailSettings(**values))


async def test_list_names_and_seed_demo(tmp_path: Path) -> None:
    async with asgi.lifespan(app_with(tmp_path)) as app:
        listed = await asgi.request(app, "/logs", headers=[*AUTH, ("accept", "application/json")])
        anonymous = await asgi.request(app, "/logs", headers=[("accept", "application/json")])
        seed = await asgi.request(app, "/logs")
    assert json.loads(listed.body) == {"files": ["app"]}
    assert json.loads(anonymous.body) == {"files": []}
    assert seed.headers["content-type"].startswith("text/plain")
    assert seed.text.splitlines()[:4] == [
        "[INFO] Starting app...",
        "[WARN] Deprecation notice",
        "[ERROR] Something failed",
        "[INFO] Recovery successful",
    ]
    assert len(seed.text.splitlines()) == 20


async def test_last_lines_without_follow_in_three_formats(tmp_path: Path) -> None:
    async with asgi.lifespan(app_with(tmp_path)) as app:
        text = await asgi.request(app, "/logs/app?lines=3&follow=false", headers=AUTH)
        nd = await asgi.request(app, "/logs/app?lines=2&follow=false&format=ndjson", headers=AUTH)
        sse = await asgi.request(
            app, "/logs/app?lines=1&follow=false", headers=[*AUTH, ("accept", "text/event-stream")]
        )
        needs_key = await asgi.request(app, "/logs/app?follow=false")
    assert text.text == "27 error\n28 ok\n29 ok\n"
    lines = [json.loads(x) for x in nd.text.splitlines()]
    assert [x["data"] for x in lines] == ["28 ok", "29 ok"]
    _ino, end = lines[-1]["id"].split(":")
    assert int(end) == (tmp_path / "app.log").stat().st_size
    assert sse.text.startswith("data: 29 ok\nid: ")
    assert needs_key.status == 401


async def test_grep_is_re2_and_bad_patterns_are_400(tmp_path: Path) -> None:
    async with asgi.lifespan(app_with(tmp_path)) as app:
        grep = await asgi.request(app, "/logs/app?lines=9&follow=false&grep=err(or)?", headers=AUTH)
        bad = await asgi.request(app, "/logs/app?grep=(unclosed", headers=AUTH)
        backref = await asgi.request(app, "/logs/app?grep=(a)%5C1", headers=AUTH)
        long = await asgi.request(app, "/logs/app?grep=" + "a" * 300, headers=AUTH)
        lines = await asgi.request(app, "/logs/app?lines=5000", headers=AUTH)
        bad_id = await asgi.request(app, "/logs/app?after=../../etc", headers=AUTH)
        # \d and int() take every script's digits: an Arabic-Indic position is no position
        arabic = await asgi.request(app, "/logs/app?after=%D9%A3:%D9%A3", headers=AUTH)
    assert grep.text == "21 error\n24 error\n27 error\n"
    for result in (bad, backref, long):
        assert result.status == 400
        assert json.loads(result.body)["error"]["type"] == "invalid_grep"
    assert lines.status == 400
    assert bad_id.status == 400
    assert arabic.status == 400
    assert json.loads(arabic.body)["error"]["type"] == "invalid_event_id"


async def test_follow_resume_and_gap_after_rotation(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    async with asgi.lifespan(app_with(tmp_path)) as app:
        task = asyncio.create_task(
            asgi.request(app, "/logs/app?lines=1&format=ndjson", headers=AUTH, leave_after=2)
        )
        await asyncio.sleep(0.1)
        with log.open("a") as handle:  # three lines in one write: one chunk after the backlog
            handle.write("new 1\nnew 2\nnew 3\n")
        first = await task
        seen = [json.loads(x) for x in first.text.splitlines()]
        with log.open("a") as handle:
            handle.write("new 4\n")
        await asyncio.sleep(0.2)
        resumed = await asgi.request(
            app,
            "/logs/app?format=ndjson",
            leave_after=1,  # what was missed comes back as one write
            headers=[*AUTH, ("last-event-id", seen[2]["id"])],
        )
        log.rename(tmp_path / "app.log.1")
        log.write_text("fresh\n")
        await asyncio.sleep(0.3)
        after = await asgi.request(
            app,
            "/logs/app?format=ndjson",
            leave_after=1,
            headers=[*AUTH, ("last-event-id", seen[-1]["id"])],
        )
    assert [x["data"] for x in seen] == ["29 ok", "new 1", "new 2", "new 3"]
    assert [json.loads(x)["data"] for x in resumed.text.splitlines()] == ["new 3", "new 4"]
    gap, fresh = [json.loads(x) for x in after.text.splitlines()]
    assert gap["event"] == "gap"
    assert gap["data"]["reason"] == "rotated"
    assert fresh["data"] == "fresh"


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_names_never_read_a_file(tmp_path: Path, name: str) -> None:
    async with asgi.lifespan(app_with(tmp_path)) as app:
        result = await asgi.request(app, f"/logs/{name}?follow=false", headers=AUTH)
    assert result.status in (400, 404, 422)
    assert "root:" not in result.text
    assert "0 error" not in result.text


def test_corpus_is_large_enough() -> None:
    assert len(set(HOSTILE)) >= 30


@pytest.mark.parametrize("how", ["same-path", "symlink", "hard-link"])
def test_regression_log_tail_followed_its_own_log_and_fed_itself(tmp_path: Path, how: str) -> None:
    # k8s made log-tail write its log to a file it also followed: each change woke the
    # watcher, which logged into that file (+124 KB per 5 s, a fifth of a core, while idle).
    own = tmp_path / "log-tail.log"
    own.write_text("")
    followed = own
    if how == "symlink":
        followed = tmp_path / "link.log"
        followed.symlink_to(own)
    elif how == "hard-link":
        followed = tmp_path / "hard.log"
        os.link(own, followed)
    with pytest.raises(ValidationError, match="own SLUICE_LOG_FILE"):
        LogTailSettings(log_tail_files=f"self={followed}", log_file=own)


def test_another_file_beside_its_own_log_is_followed(tmp_path: Path) -> None:
    own = tmp_path / "log-tail.log"
    other = tmp_path / "app.log"
    own.write_text("")
    other.write_text("")
    settings = LogTailSettings(log_tail_files=f"app={other}", log_file=own)
    assert settings.log_tail_files == f"app={other}"
