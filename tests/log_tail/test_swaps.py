"""File swaps under a follower (file symlink, folder symlink, hard link, FIFO, device, mount):
no byte of the foreign file reaches a follower, the backlog or a resume; followers are told
(``refused`` with the reason); the file's history is dropped; the real file, once back, is
followed again from its start."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from sluice_services.log_tail import files
from sluice_services.log_tail.app import create_app
from sluice_services.log_tail.files import (
    Refused,
    check_path,
    open_checked,
    open_folder,
    parse_files,
)
from sluice_services.log_tail.metrics import REFUSALS, ROTATIONS
from sluice_services.log_tail.settings import LogTailSettings
from sluice_services.log_tail.tailer import Follower, Item, Line, Notice, Tailer
from tests.log_tail.swaps import MARK, REAL, SWAPS, Layout, Swap, layout, leaks
from tests.support import asgi
from tests.support.logs import captured

pytestmark = pytest.mark.anyio

KEY = "sk-test-logtail-swaps-00000000000"
AUTH = [("authorization", f"Bearer {KEY}")]


def tailer(path: Path) -> Tailer:
    return Tailer(f"s{abs(hash(path)) % 10**8}", path, "test", 100, 1000, poll=0.05)


def refusals(t: Tailer, reason: str) -> float:
    return float(REFUSALS.labels("test", t.name, reason)._value.get())


def renames(t: Tailer) -> float:
    return float(ROTATIONS.labels("test", t.name, "rename")._value.get())


def render(item: Item) -> str:
    return item.text if isinstance(item, Line) else json.dumps(item.data)


async def until(
    follower: Follower, done: Callable[[Item], bool], timeout: float = 3.0
) -> list[Item]:
    """Items off the follower's queue up to and including the first for which ``done``."""
    items: list[Item] = []
    async with asyncio.timeout(timeout):
        while not items or not done(items[-1]):
            items.append(await follower.queue.get())
    return items


def drain(follower: Follower) -> list[Item]:
    return [follower.queue.get_nowait() for _ in range(follower.queue.qsize())]


def is_refused(item: Item) -> bool:
    return isinstance(item, Notice) and item.kind == "refused"


def open_descriptors(path: Path) -> int:
    """How many of this process's descriptors are ``path`` (symlinks resolved)."""
    target = str(path.resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:
            continue
    return count


@pytest.mark.parametrize("swap", SWAPS, ids=str)
async def test_file_swaps_under_a_follower(tmp_path: Path, swap: Swap) -> None:
    with layout(tmp_path, swap) as lay:
        t = tailer(lay.log)
        t.start()
        try:
            follower = t.follow(1000)
            real = (t.ino, t.ring[-1].end)
            before = refusals(t, swap.reason), renames(t)
            swap.put(lay)
            seen = await until(follower, is_refused)
            for _ in range(4):  # the foreign file grows; several wakes and polls go by
                lay.write_foreign()
                await asyncio.sleep(0.1)
            seen += drain(follower)
            refused = [i for i in seen if is_refused(i)]
            assert len(refused) == 1  # told once, however many polls and wakes went by
            notice = refused[0]
            assert isinstance(notice, Notice)
            assert notice.data == {"file": t.name, "reason": swap.reason}
            assert not any(leaks(render(i)) for i in seen)
            assert not any(isinstance(i, Line) for i in seen[seen.index(notice) :])
            assert t.backlog(100) == []  # the history is dropped
            assert t.refusal() == notice  # a follower arriving now is told
            assert t.since(*real, 1 << 20) == ([], False)
            assert t.since(os.stat(lay.foreign_log).st_ino, 0, 1 << 20) == ([], False)
            assert t.fd is None
            assert open_descriptors(lay.foreign_log) == 0
            assert refusals(t, swap.reason) - before[0] == 1  # counted once, not per poll
            assert renames(t) == before[1]  # never taken for a rotation: the check is the walk

            swap.back(lay)
            again = await until(follower, lambda i: isinstance(i, Line) and i.text == REAL[-1])
            assert [i.kind if isinstance(i, Notice) else i.text for i in again] == [
                "created",
                *REAL,
            ]
            assert [line.text for line in t.backlog(100)] == REAL
            assert t.refusal() is None
        finally:
            await t.stop()


async def test_a_file_refused_at_start_is_followed_once_it_is_valid(tmp_path: Path) -> None:
    foreign = tmp_path / "passwd"
    foreign.write_text(f"root:{MARK}\n")
    log = tmp_path / "app.log"
    os.link(foreign, log)
    t = tailer(log)
    t.start()
    try:
        assert t.backlog(100) == []
        assert t.refusal() == Notice("refused", {"file": t.name, "reason": "hard_link"})
        follower = t.follow(100)
        log.unlink()
        log.write_text("mine\n")
        assert [render(i) for i in await until(follower, lambda i: isinstance(i, Line))] == [
            json.dumps({"file": t.name}),
            "mine",
        ]
    finally:
        await t.stop()


# -- the window between a check and the open ----------------------------------------------
@pytest.mark.parametrize("swap", [s for s in SWAPS if s.name in ("hard-link", "fifo")], ids=str)
def test_a_swap_between_the_check_and_the_open_is_refused(
    tmp_path: Path, swap: Swap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry is checked, then swapped before it is opened: what decides is the fstat of
    the descriptor actually opened."""
    real_stat = os.stat

    with layout(tmp_path, swap) as lay:

        def stat_then_swap(*args: Any, **kwargs: Any) -> os.stat_result:
            found = real_stat(*args, **kwargs)
            if args and args[0] == lay.log.name and "dir_fd" in kwargs:
                monkeypatch.setattr(os, "stat", real_stat)
                swap.put(lay)  # after the check, before the open
            return found

        monkeypatch.setattr(os, "stat", stat_then_swap)
        with pytest.raises(Refused) as refused:
            open_checked(lay.log)
        assert refused.value.reason == swap.reason
        assert open_descriptors(lay.foreign_log) == 0


# -- every check goes through the walk -----------------------------------------------------
def test_every_look_at_the_path_refuses_a_symlinked_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "app.log").write_text("x\n")
    link = tmp_path / "link"
    link.symlink_to(real)
    path = link / "app.log"
    for look in (check_path, open_checked, open_folder):
        with pytest.raises(Refused) as refused:
            look(path)
        assert refused.value.reason == "symlink"
    (tmp_path / "plain").write_text("a file where a folder should be\n")
    with pytest.raises(Refused) as refused:
        check_path(tmp_path / "plain" / "app.log")
    assert refused.value.reason == "not_directory"
    assert check_path(tmp_path / "missing" / "app.log") is None
    assert open_checked(real / "nothing.log") is None
    with pytest.raises(Refused):
        open_folder(Path("/tmp/../etc/passwd"))  # never walked through ".."


def test_symlinks_in_the_configured_path_are_resolved_once_at_start(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert parse_files(f"app={tmp_path}/link/app.log", None) == {"app": real / "app.log"}
    with pytest.raises(files.ConfigError):
        parse_files("app=/", None)


# -- inotify watches only the folder the walk reaches -------------------------------------
def watched_inodes() -> set[int]:
    """Inodes this process's inotify instances watch (from /proc/self/fdinfo)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("inotify wd:"):
                fields = dict(f.split(":", 1) for f in line.split()[1:] if ":" in f)
                inodes.add(int(fields["ino"], 16))
    return inodes


async def wait(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_the_watcher_never_watches_a_folder_through_a_symlink(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "app.log").write_text(f"root:{MARK}\n")
    folder = tmp_path / "logs"  # not there at start
    t = tailer(folder / "app.log")
    t.start()
    try:
        follower = t.follow(100)
        folder.symlink_to(foreign, target_is_directory=True)
        await until(follower, is_refused)
        for _ in range(5):  # the watcher retries; none of its tries may watch the target
            await asyncio.sleep(0.1)
            assert foreign.stat().st_ino not in watched_inodes()
        folder.unlink()
        folder.mkdir()
        await wait(lambda: folder.stat().st_ino in watched_inodes())
        (folder / "app.log").write_text("mine\n")
        got = await until(follower, lambda i: isinstance(i, Line))
        assert not any(leaks(render(i)) for i in got)
        assert isinstance(got[-1], Line) and got[-1].text == "mine"
    finally:
        await t.stop()
    assert folder.stat().st_ino not in watched_inodes()  # stopped: nothing left watching


async def test_a_folder_swapped_later_is_watched_again_through_the_walk(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "app.log").write_text("one\n")
    t = tailer(folder / "app.log")
    t.start()
    try:
        first = folder.stat().st_ino
        await wait(lambda: first in watched_inodes())
        folder.rename(tmp_path / "old")
        folder.mkdir()
        await wait(lambda: folder.stat().st_ino in watched_inodes())
        await wait(lambda: first not in watched_inodes())
    finally:
        await t.stop()


# -- through the routes: backlog, Last-Event-ID, ?after=, a live follower, readyz, metrics --
def app_for(lay: Layout) -> Any:
    return create_app(
        LogTailSettings(
            api_keys=SecretStr(KEY), log_tail_files=f"app={lay.log}", log_tail_poll_interval=0.05
        )
    )


async def poll_text(get: Callable[[], Awaitable[asgi.Result]], check: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + 3
    while True:
        text = (await get()).text
        if check(text) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("swap", SWAPS, ids=str)
async def test_file_swaps_reach_no_request(tmp_path: Path, swap: Swap) -> None:
    with layout(tmp_path, swap) as lay:
        async with asgi.lifespan(app_for(lay)) as app:

            async def get(query: str, *headers: tuple[str, str]) -> asgi.Result:
                return await asgi.request(app, f"/logs/app?{query}", headers=[*AUTH, *headers])

            first = [
                json.loads(x)
                for x in (await get("lines=5&follow=false&format=ndjson")).text.splitlines()
            ]
            assert [x["data"] for x in first] == REAL
            swap.put(lay)
            refused = {"event": "refused", "data": {"file": "app", "reason": swap.reason}}
            backlog = await poll_text(
                lambda: get("lines=100&follow=false&format=ndjson"), lambda t: "refused" in t
            )
            lay.write_foreign()
            await asyncio.sleep(0.2)
            foreign_id = f"{os.stat(lay.foreign_log).st_ino}:0"
            answers = {
                "backlog": await get("lines=100&follow=false&format=ndjson"),
                "last-event-id": await get(
                    "follow=false&format=ndjson", ("last-event-id", first[1]["id"])
                ),
                "after": await get(f"follow=false&format=ndjson&after={first[0]['id']}"),
                "after-foreign": await get(f"follow=false&format=ndjson&after={foreign_id}"),
            }
            live = await asgi.request(app, "/logs/app?format=ndjson", headers=AUTH, leave_after=1)
            sse = await asgi.request(
                app, "/logs/app", headers=[*AUTH, ("accept", "text/event-stream")], leave_after=1
            )
            text = await get("follow=false")
            ready = await asgi.request(app, "/readyz")
            metrics = (await asgi.request(app, "/metrics")).text
            assert refused in [json.loads(x) for x in backlog.splitlines()]
            for what, answer in {**answers, "live": live}.items():
                assert answer.status == 200, what
                assert not leaks(answer.text), what
                items = [json.loads(x) for x in answer.text.splitlines()]
                assert refused in items, what
                assert not [x for x in items if "event" not in x], what  # no line at all
            assert "event: refused\n" in sse.text and not leaks(sse.text)
            assert f"==> app: refused file=app reason={swap.reason} <==" in text.text
            assert not leaks(text.text)
            assert ready.status == 200
            assert any(
                line.startswith("sluice_log_tail_refusals_total{")
                and f'reason="{swap.reason}"' in line
                for line in metrics.splitlines()
            )

            swap.back(lay)
            back = await poll_text(
                lambda: get("lines=100&follow=false"),
                lambda t: t == "".join(f"{r}\n" for r in REAL),
            )
            assert back == "".join(f"{line}\n" for line in REAL)


# -- errors: a refusal drops the history, a passing failure does not ----------------------
@pytest.mark.parametrize(
    ("error", "refused"),
    [(errno.EACCES, "unreadable"), (errno.EMFILE, None)],
    ids=["EACCES", "EMFILE"],
)
async def test_an_unreadable_path_is_refused_and_a_passing_error_is_only_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, refused: str | None
) -> None:
    log = tmp_path / "app.log"
    log.write_text("".join(f"{line}\n" for line in REAL))
    real_open = os.open

    def failing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if "dir_fd" in kwargs:  # every step of the walk
            raise OSError(error, os.strerror(error))
        return real_open(path, flags, *args, **kwargs)

    t = tailer(log)
    t.start()
    try:
        follower = t.follow(100)
        with captured("log_tail") as records:
            monkeypatch.setattr(os, "open", failing_open)
            await asyncio.sleep(0.3)  # several polls fail
            monkeypatch.setattr(os, "open", real_open)
        with log.open("a") as handle:
            handle.write("after\n")
        got = await until(follower, lambda i: isinstance(i, Line) and i.text == "after")
    finally:
        await t.stop()
    notices = [i for i in got if isinstance(i, Notice)]
    if refused is None:  # out of descriptors says nothing about the file: nothing dropped
        assert notices == []
        assert [line.text for line in got if isinstance(line, Line)] == ["after"]
        assert any("retrying" in r.getMessage() for r in records)  # the loop went on
    else:
        assert notices == [
            Notice("refused", {"file": t.name, "reason": refused}),
            Notice("created", {"file": t.name}),
        ]
        assert [line.text for line in got if isinstance(line, Line)] == [*REAL, "after"]
