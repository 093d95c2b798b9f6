"""``/jobs`` and the seed's ``/progress``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError
from starlette.responses import JSONResponse

from sluice.admission import stream
from sluice.body import JsonBodyRoute
from sluice.errors import ApiError
from sluice.events import Event
from sluice.formats import StreamFormat, choose_format
from sluice.runtime import Runtime
from sluice.streaming import StreamResponse
from sluice_services.progress.kinds import KINDS
from sluice_services.progress.metrics import (
    DELIVERY_LATENCY,
    EVENTS_DELIVERED,
    JOBS_CREATED,
    SUBSCRIBERS,
)
from sluice_services.progress.model import Job, JobEvent
from sluice_services.progress.service import ProgressService
from sluice_services.progress.settings import ProgressSettings

log = logging.getLogger("progress")


class JobRequest(BaseModel):
    kind: str = Field(min_length=1, max_length=64, description="A registered job kind.")
    params: dict[str, Any] = Field(default_factory=dict)


def _owner(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    if principal is None:  # only if /jobs were made public: then one shared owner
        return "anonymous"
    return str(principal.key_id)


def build_router(runtime: Runtime[ProgressSettings]) -> APIRouter:
    service = ProgressService(runtime)
    runtime.resources.append(service.lifespan)
    settings = service.settings
    limit = runtime.rates.limit
    router = APIRouter(tags=["progress"], route_class=JsonBodyRoute)

    async def owned(request: Request, job_id: str) -> Job:
        job = await service.store.get(job_id) if len(job_id) <= 64 else None
        if job is None or job.owner != _owner(request):
            raise ApiError(404, "not_found", "no such job")  # never say whose it is
        return job

    @router.post("/jobs", status_code=202)
    @limit()
    async def create_job(request: Request, body: JobRequest) -> JSONResponse:
        kind = KINDS.get(body.kind)
        if kind is None:
            raise ApiError(
                422,
                "validation_error",
                f"kind: unknown kind {body.kind!r}; known: {', '.join(sorted(KINDS))}",
                details=[{"field": "body.kind", "message": "unknown kind"}],
            )
        try:
            params = kind.params.model_validate(body.params)
        except ValidationError as exc:
            details = [
                {
                    "field": ".".join(["body", "params", *(str(p) for p in e["loc"])]),
                    "message": e["msg"],
                }
                for e in exc.errors()
            ]
            summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
            raise ApiError(
                422, "validation_error", f"invalid request: {summary}", details=details
            ) from None
        job = Job(kind=kind.name, params=params.model_dump(), owner=_owner(request))
        await service.store.create(job)
        try:
            await service.runner.submit(job)
        except RedisError as exc:
            # The job exists, in the requeue set: the reaper's next pass queues it. A 503
            # now would have the client retry into a duplicate of a job that runs anyway.
            log.warning("queueing job %s failed (%s); the reaper queues it", job.id, exc)
        JOBS_CREATED.labels(settings.service_name, kind.name).inc()
        public = job.public()
        return JSONResponse(
            {
                "id": job.id,
                "status_url": public["status_url"],
                "events_url": public["events_url"],
                "state": job.state,
            },
            status_code=202,
            headers={"Location": public["status_url"]},
        )

    # (slowapi writes its X-RateLimit headers into `response` for routes returning data.)
    @router.get("/jobs")
    @limit()
    async def list_jobs(request: Request, response: Response) -> dict[str, Any]:
        jobs = await service.store.list(_owner(request))
        return {"jobs": [j.public() for j in sorted(jobs, key=lambda j: j.created_at)]}

    @router.get("/jobs/kinds")
    @limit()
    async def job_kinds(request: Request, response: Response) -> dict[str, Any]:
        """The kinds a job may be of, each with the JSON Schema of its ``params`` (what a
        form for it asks)."""
        return {
            "kinds": [
                {"name": kind.name, "params": kind.params.model_json_schema()}
                for kind in sorted(KINDS.values(), key=lambda k: k.name)
            ]
        }

    @router.get("/jobs/{job_id}")
    @limit()
    async def get_job(request: Request, response: Response, job_id: str) -> dict[str, Any]:
        return (await owned(request, job_id)).public()

    @router.delete("/jobs/{job_id}", status_code=202)
    @limit()
    async def cancel_job(request: Request, response: Response, job_id: str) -> dict[str, Any]:
        job = await owned(request, job_id)
        if job.final:
            return job.public()
        await service.store.request_cancel(job.id)
        await service.runner.cancel(job)  # a queued arq job is dropped, a running one stopped
        # A queued job ends here; one that started meanwhile is ended by its runner, which
        # finds the request (each transition is atomic: only one of the two can win).
        await service.store.cancel_queued(job.id, "cancelled by request")
        now = await owned(request, job_id)
        now.cancel_requested = True
        return now.public()

    @router.get("/jobs/{job_id}/events", response_class=StreamResponse, response_model=None)
    @limit()
    async def job_events(request: Request, job_id: str) -> StreamResponse | Response:
        fmt = choose_format(request, StreamFormat.SSE, [StreamFormat.SSE, StreamFormat.NDJSON])
        job = await owned(request, job_id)
        after = request.query_params.get("after") or request.headers.get("last-event-id")
        if after is not None:
            if not service.store.valid_event_id(after):
                raise ApiError(
                    400, "invalid_event_id", f"{after!r} is not an event id of this service"
                )
            if int(after) > job.seq:  # nothing will ever come after it: no endless wait
                raise ApiError(
                    400,
                    "invalid_event_id",
                    f"event {after} is past this job's last event ({job.seq})",
                )
            if job.final and int(after) >= job.seq:
                # The subscriber has the whole history, the end included (an EventSource
                # reconnecting after the end): 204 ends an EventSource for good.
                return Response(status_code=204, headers={"cache-control": "no-store"})
        return await stream(request, _deliver(service.store.events(job_id, after)), fmt)

    async def _deliver(events: AsyncIterator[JobEvent]) -> AsyncIterator[Event]:
        delivered = EVENTS_DELIVERED.labels(settings.service_name)
        latency = DELIVERY_LATENCY.labels(settings.service_name)
        subscribers = SUBSCRIBERS.labels(settings.service_name)
        subscribers.inc()
        try:
            async for event in events:
                published = event.data.get("ts")
                if isinstance(published, float):
                    latency.observe(max(0.0, time.time() - published))
                delivered.inc()
                yield Event(data=event.data, event=event.type, id=event.id)
        finally:
            subscribers.dec()

    @router.get("/progress", response_class=StreamResponse, summary="The seed's 100-step demo")
    @limit()
    async def seed_progress(request: Request) -> StreamResponse:
        return await stream(
            request,
            _seed(settings.dev_progress_seed_steps, settings.dev_progress_seed_delay),
            StreamFormat.SSE,
        )

    return router


async def _seed(total: int, delay: float) -> AsyncIterator[Event]:
    """As the seed notes write it, to the byte: JSON with spaces, then complete/Done!."""
    for i in range(1, total + 1):
        progress = (i / total) * 100
        yield Event(data=f'{{"progress": {progress}, "step": {i}}}')
        await asyncio.sleep(delay)
    yield Event(data="Done!", event="complete")
