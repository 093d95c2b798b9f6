"""How many streams one caller, one worker and the service may hold at once.

Stream caps are checked before a stream starts and released exactly once when it ends:

* per caller (API key id, else client address, :func:`sluice.caller.caller_key`): 429
  when over;
* per worker: 503 (this server is full) when over;
* with Redis, per caller and for the whole service across workers and replicas, as
  leases in a sorted set that a live stream refreshes, so a killed worker's slots expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from typing import Any

from fastapi import Request
from redis.asyncio import Redis

from sluice.caller import caller_key
from sluice.errors import ApiError
from sluice.metrics import RATE_LIMITED
from sluice.request_context import route_template
from sluice.settings import CoreSettings

log = logging.getLogger("sluice.limits")

LEASE_SECONDS = 30.0
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class Slot:
    """One held stream slot; ``release()`` is idempotent."""

    def __init__(self, caps: StreamCaps, caller: str, member: str | None) -> None:
        self._caps = caps
        self.caller = caller
        self.member = member
        self.released = False
        self._refresh: asyncio.Task[None] | None = None
        if member is not None:
            self._refresh = asyncio.get_running_loop().create_task(caps._keep_alive(self))

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._refresh is not None:
            self._refresh.cancel()
        self._caps._release(self)


class StreamCaps:
    def __init__(self, settings: CoreSettings, redis: Redis | None) -> None:
        self.settings = settings
        self.redis = redis
        self.local: Counter[str] = Counter()
        self.local_total = 0
        self._acquire = redis.register_script(_ACQUIRE) if redis is not None else None
        prefix = f"sluice:{settings.service_name}:streams"
        self._global_key = f"{prefix}:all"
        self._caller_prefix = f"{prefix}:caller:"
        self._pending_release: set[asyncio.Task[Any]] = set()
        self.lease_seconds = LEASE_SECONDS

    async def acquire(self, request: Request) -> Slot:
        """A slot for a new stream of this request's caller, or ApiError 429/503."""
        settings = self.settings
        caller = caller_key(request)
        route = route_template(request.scope)
        service = settings.service_name
        if self.local_total >= settings.max_streams_per_worker:
            RATE_LIMITED.labels(service, route, "streams_per_worker").inc()
            raise ApiError(
                503, "server_full", "this server holds its maximum of streams", {"Retry-After": "5"}
            )
        if self.redis is None:
            if self.local[caller] >= settings.max_streams_per_key:
                RATE_LIMITED.labels(service, route, "streams_per_key").inc()
                raise _too_many(settings.max_streams_per_key)
            self._hold_local(caller)
            return Slot(self, caller, None)
        member = uuid.uuid4().hex
        now = time.time()
        if not await self._lease(
            self._caller_prefix + caller, member, now, settings.max_streams_per_key
        ):
            RATE_LIMITED.labels(service, route, "streams_per_key").inc()
            raise _too_many(settings.max_streams_per_key)
        if settings.max_streams_global and not await self._lease(
            self._global_key, member, now, settings.max_streams_global
        ):
            await self._redis().zrem(self._caller_prefix + caller, member)
            RATE_LIMITED.labels(service, route, "streams_global").inc()
            raise ApiError(
                503, "server_full", "the service holds its maximum of streams", {"Retry-After": "5"}
            )
        self._hold_local(caller)
        return Slot(self, caller, member)

    def _redis(self) -> Redis:
        assert self.redis is not None
        return self.redis

    def _hold_local(self, caller: str) -> None:
        self.local[caller] += 1
        self.local_total += 1

    async def _lease(self, key: str, member: str, now: float, cap: int) -> bool:
        assert self._acquire is not None
        lease = self.lease_seconds
        args: list[float | int | str] = [now, now + lease, cap, member, int(lease * 4) + 1]
        return bool(await self._acquire(keys=[key], args=args))

    async def _keep_alive(self, slot: Slot) -> None:
        assert slot.member is not None
        member = slot.member
        keys = [self._caller_prefix + slot.caller]
        if self.settings.max_streams_global:
            keys.append(self._global_key)
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            expires = time.time() + self.lease_seconds
            try:
                async with self._redis().pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.zadd(key, {member: expires}, xx=True)
                    await pipe.execute()
            except Exception:
                log.warning("stream slot lease refresh failed", exc_info=True)

    def _release(self, slot: Slot) -> None:
        self.local[slot.caller] -= 1
        if self.local[slot.caller] <= 0:
            del self.local[slot.caller]
        self.local_total -= 1
        if slot.member is not None:
            task = asyncio.get_running_loop().create_task(self._release_remote(slot))
            self._pending_release.add(task)
            task.add_done_callback(self._pending_release.discard)

    async def _release_remote(self, slot: Slot) -> None:
        assert slot.member is not None
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                pipe.zrem(self._caller_prefix + slot.caller, slot.member)
                if self.settings.max_streams_global:
                    pipe.zrem(self._global_key, slot.member)
                await pipe.execute()
        except Exception:
            log.warning("stream slot release failed; its lease expires in %ss", self.lease_seconds)


def _too_many(cap: int) -> ApiError:
    return ApiError(
        429,
        "too_many_streams",
        f"this caller already holds {cap} concurrent streams; close one first",
        {"Retry-After": "5"},
    )
