"""Job kinds: one small async function each, reporting through a progress callback.

Registering a kind::

    class ResizeParams(BaseModel):
        images: int = Field(ge=1, le=10_000)

    @job_kind("resize", ResizeParams)
    async def resize(params: ResizeParams, progress: Progress) -> dict[str, Any]:
        for i in range(params.images):
            ...  # real work; cancellation arrives as asyncio.CancelledError
            await progress.update(percent=100 * (i + 1) / params.images, step=i + 1,
                                  message=f"resized {i + 1} of {params.images}")
        return {"resized": params.images}

The return value becomes the job's ``result`` and its ``complete`` event; an exception
makes it ``failed`` with the exception's message.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Progress(Protocol):
    async def update(self, percent: float, step: int | None = None, message: str = "") -> None: ...

    async def log(self, message: str) -> None: ...


KindFunction = Callable[[Any, Progress], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    params: type[BaseModel]
    run: KindFunction
    retries: int = 0  # times a job lost with its worker is run again


KINDS: dict[str, Kind] = {}


def job_kind(
    name: str, params: type[BaseModel], retries: int = 0
) -> Callable[[KindFunction], KindFunction]:
    def register(function: KindFunction) -> KindFunction:
        KINDS[name] = Kind(name, params, function, retries)
        return function

    return register


class JobFailed(Exception):
    """A kind's clean way to fail with a message for the user."""


class SimulateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(10, ge=1, le=100_000)
    delay: float = Field(0.1, ge=0, le=3600)
    fail_at: int | None = Field(None, ge=1)


@job_kind("simulate", SimulateParams)
async def simulate(params: SimulateParams, progress: Progress) -> dict[str, Any]:
    """Pretend work: ``steps`` steps, ``delay`` seconds each, failing at ``fail_at``."""
    for step in range(1, params.steps + 1):
        await asyncio.sleep(params.delay)
        if params.fail_at == step:
            raise JobFailed(f"simulated failure at step {step}")
        await progress.update(100 * step / params.steps, step, f"step {step} of {params.steps}")
    return {"steps": params.steps}


CHUNK = 1 << 20


class ChecksumParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size_mb: int | None = Field(None, ge=1, le=1_000_000)
    file: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")

    @model_validator(mode="after")
    def _one_source(self) -> ChecksumParams:
        if (self.size_mb is None) == (self.file is None):
            raise ValueError("give exactly one of size_mb (generated data) or file (a name)")
        return self


# Set by the service from SLUICE_PROGRESS_CHECKSUM_FILES: names the checksum kind may read.
CHECKSUM_FILES: dict[str, Path] = {}
CHECKSUM_MAX_MB = 4096


@job_kind("checksum", ChecksumParams, retries=1)
async def checksum(params: ChecksumParams, progress: Progress) -> dict[str, Any]:
    """sha256 of ``size_mb`` MiB of generated data or of an allow-listed file, by bytes."""
    digest = hashlib.sha256()
    if params.file is not None:
        path = CHECKSUM_FILES.get(params.file)
        if path is None:
            raise JobFailed(f"no checksum file named {params.file!r}")
        total = path.stat().st_size
        handle = path.open("rb")
    else:
        assert params.size_mb is not None
        if params.size_mb > CHECKSUM_MAX_MB:
            raise JobFailed(f"size_mb is over the limit of {CHECKSUM_MAX_MB}")
        total = params.size_mb * CHUNK
        handle = None
    done = 0
    block = bytes(range(256)) * (CHUNK // 256)
    try:
        while done < total:
            data = handle.read(CHUNK) if handle is not None else block[: min(CHUNK, total - done)]
            if not data:
                break
            await asyncio.to_thread(digest.update, data)  # hashing off the event loop
            done += len(data)
            await progress.update(
                100 * done / total if total else 100,
                done // CHUNK,
                f"{done // CHUNK} of {total // CHUNK} MiB",
            )
    finally:
        if handle is not None:
            handle.close()
    return {"sha256": digest.hexdigest(), "bytes": done}


def load_checksum_files(spec: str) -> dict[str, Path]:
    """``name=path,...`` resolved now; a name is all a request can say."""
    files = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"SLUICE_PROGRESS_CHECKSUM_FILES: {item!r} is not name=path")
        files[name.strip()] = Path(path.strip()).resolve()
    return files
