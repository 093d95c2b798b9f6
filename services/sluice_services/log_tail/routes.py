"""``GET /logs`` (the seed's demo, or the list of names) and ``GET /logs/{name}``."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import re2
from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from sluice.admission import stream
from sluice.errors import ApiError
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format, encode
from sluice.runtime import Runtime
from sluice.streaming import StreamResponse
from sluice_services.log_tail.files import parse_files
from sluice_services.log_tail.metrics import GAPS, LINES_DELIVERED
from sluice_services.log_tail.settings import LogTailSettings
from sluice_services.log_tail.tailer import Follower, Item, Line, Notice, Tailer

SEED_LINES = (
    "[INFO] Starting app...\n",
    "[WARN] Deprecation notice\n",
    "[ERROR] Something failed\n",
    "[INFO] Recovery successful\n",
)
_POSITION = re.compile(r"^([0-9]{1,20}):([0-9]{1,20})$")  # ASCII: \d matches any script's digits


class LogTailService:
    def __init__(self, runtime: Runtime[LogTailSettings]) -> None:
        settings = runtime.settings
        self.settings = settings
        self.files = parse_files(
            settings.log_tail_files, settings.log_tail_files_file, own_log=settings.log_file
        )
        self.tailers = {
            name: Tailer(
                name,
                path,
                settings.service_name,
                settings.log_tail_max_lines,
                settings.log_tail_max_line_bytes,
                settings.log_tail_poll_interval,
            )
            for name, path in self.files.items()
        }

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        for tailer in self.tailers.values():
            tailer.start()
        try:
            yield
        finally:
            await asyncio.gather(*(t.stop() for t in self.tailers.values()))


def grep_filter(pattern: str | None, limit: int) -> Callable[[str], bool] | None:
    """A linear-time (RE2) matcher: no pattern can stall the server."""
    if pattern is None or pattern == "":
        return None
    if len(pattern) > limit:
        raise ApiError(400, "invalid_grep", f"grep pattern longer than {limit} characters")
    try:
        compiled = re2.compile(pattern)
    except Exception as exc:
        reason = str(exc.args[0] if exc.args else exc).strip("b'\"")
        raise ApiError(400, "invalid_grep", f"grep pattern is not valid RE2: {reason}") from None
    return lambda text: compiled.search(text) is not None


def build_router(runtime: Runtime[LogTailSettings]) -> APIRouter:
    service = LogTailService(runtime)
    runtime.resources.append(service.lifespan)
    settings = service.settings
    limit = runtime.rates.limit
    router = APIRouter(tags=["log-tail"])

    @router.get("/logs", response_model=None)
    @limit()
    async def logs(request: Request) -> Response:
        """JSON clients get the file names they may read; anything else the seed's demo."""
        if "application/json" in request.headers.get("accept", ""):
            principal = getattr(request.state, "principal", None)
            names = sorted(service.tailers) if principal is not None else []
            return JSONResponse({"files": names})
        seed = _seed(settings.dev_log_tail_seed_delay)
        return await stream(request, seed, StreamFormat.TEXT, drain="finish")  # finite

    @router.get("/logs/{name}", response_class=StreamResponse)
    @limit()
    async def follow(
        request: Request,
        name: str,
        lines: int = Query(10, ge=0, le=100_000),
        follow: bool = Query(True),
        grep: str | None = Query(None, max_length=4096),
    ) -> StreamResponse:
        tailer = service.tailers.get(name)
        if tailer is None:
            raise ApiError(404, "not_found", "no log file by that name")
        if lines > settings.log_tail_max_lines:
            raise ApiError(400, "invalid_lines", f"lines is at most {settings.log_tail_max_lines}")
        fmt = choose_format(request, StreamFormat.TEXT)
        matches = grep_filter(grep, settings.log_tail_grep_max)
        after = request.query_params.get("after") or request.headers.get("last-event-id")
        position = None
        if after is not None:
            found = _POSITION.match(after)
            if found is None:
                raise ApiError(400, "invalid_event_id", "a position is inode:offset")
            position = (int(found[1]), int(found[2]))
        # Follow first, then take the backlog: nothing is read in between (no await).
        follower = tailer.follow(settings.log_tail_follower_buffer) if follow else None
        backlog: list[Item]
        if position is None:
            backlog = list(tailer.backlog(lines))
        else:
            resumed, ok = tailer.since(*position, settings.log_tail_resume_max_bytes)
            if ok:
                backlog = resumed
            else:
                reason = "rotated" if position[0] != tailer.ino else "resume_too_old"
                GAPS.labels(settings.service_name, name, reason).inc()
                gap = Notice("gap", {"reason": reason, "file": name})
                backlog = [gap, *[x for x in tailer.ring if x.ino == tailer.ino]]
        refusal = tailer.refusal()
        if refusal is not None:  # nothing of the file is kept: say why nothing comes
            backlog.append(refusal)
        events = _chunks(tailer, follower, backlog, matches, fmt)
        # Without follow the answer is finite: a drain lets it finish. A follower is endless:
        # SSE/NDJSON get the reconnect hint and resume by id; text is cut (see streaming).
        return await stream(request, events, fmt, drain="reconnect" if follow else "finish")

    async def _chunks(
        tailer: Tailer,
        follower: Follower | None,
        backlog: list[Item],
        matches: Callable[[str], bool] | None,
        fmt: StreamFormat,
    ) -> AsyncIterator[bytes]:
        """Whatever is waiting goes out as one write: a busy file costs writes per wake,
        not per line, and each line is framed once per format for all its followers."""
        delivered = LINES_DELIVERED.labels(settings.service_name, tailer.name)
        try:
            items = backlog
            while True:
                frames = [f for f in (_frame(tailer.name, i, matches, fmt) for i in items) if f]
                if frames:
                    delivered.inc(len(frames))
                    yield b"".join(frames)
                if follower is None:
                    return
                queue = follower.queue
                items = [await queue.get()]
                for _ in range(min(queue.qsize(), 5000)):
                    items.append(queue.get_nowait())
        finally:
            if follower is not None:
                tailer.unfollow(follower)

    return router


def _frame(
    name: str, item: Item, matches: Callable[[str], bool] | None, fmt: StreamFormat
) -> bytes | None:
    if isinstance(item, Line):
        if matches is not None and not matches(item.text):
            return None
        return item.framed(fmt)
    details = " ".join(f"{k}={v}" for k, v in item.data.items())
    text = f"==> {name}: {item.kind} {details} <==\n"
    return encode(Event(data=item.data, event=item.kind, text=text), fmt)


async def _seed(delay: float) -> AsyncIterator[Event]:
    for line in SEED_LINES * 5:
        yield Event(data=line)
        await asyncio.sleep(delay)
