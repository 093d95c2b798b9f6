"""sluice.stream_follower against a real redis-server: replay then live with no gap and no
duplicate, one XREAD for every reader of the process, a reader that falls behind told so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sluice.stream_follower import FellBehind, Fields, StreamFollower, id_key
from tests.support.procs import Proc

pytestmark = pytest.mark.anyio


def keep(entry_id: str, fields: Fields) -> Fields:
    return fields


def ends(fields: Fields) -> bool:
    return fields.get(b"end") == b"1"


async def client(redis_server: Proc) -> Redis:
    redis: Redis = Redis.from_url(
        redis_server.extra["url"], socket_timeout=2, socket_connect_timeout=2
    )
    return redis


async def read_all(entries: AsyncIterator[tuple[str, Fields]]) -> list[int]:
    return [int(fields[b"n"]) async for _, fields in entries]


async def test_readers_get_the_replay_then_every_new_entry_once_in_order(
    redis_server: Proc,
) -> None:
    redis = await client(redis_server)
    follower = StreamFollower(redis, keep)
    key = f"test:follower:{time.time_ns()}"
    try:
        for n in range(1, 51):  # written before any reader: the replay
            await redis.xadd(key, {"n": str(n)}, id=f"0-{n}")
        readers = [
            asyncio.ensure_future(read_all(follower.entries(key, after, ends)))
            for after in ("0-0", "0-10", "0-50")
            for _ in range(20)
        ]
        await asyncio.sleep(0.2)
        for n in range(51, 1001):  # while they read: the live part, in bursts
            await redis.xadd(key, {"n": str(n), **({"end": "1"} if n == 1000 else {})}, id=f"0-{n}")
            if n % 100 == 0:
                await asyncio.sleep(0.01)
        got = await asyncio.wait_for(asyncio.gather(*readers), 20)
        for index, numbers in enumerate(got):
            first = (0, 10, 50)[index // 20] + 1
            assert numbers == list(range(first, 1001))
        assert follower.readers == 0 and follower.followed(key) == 0
    finally:
        await follower.close()
        await redis.delete(key)
        await redis.aclose()


async def test_one_xread_serves_every_stream_of_the_process(redis_server: Proc) -> None:
    redis = await client(redis_server)
    follower = StreamFollower(redis, keep)
    keys = [f"test:follower:many:{time.time_ns()}:{i}" for i in range(30)]
    calls = in_flight = most_in_flight = 0
    xread = redis.xread

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls, in_flight, most_in_flight
        calls += 1
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            return await xread(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            in_flight -= 1

    redis.xread = counted  # type: ignore[method-assign]
    try:
        readers = [asyncio.ensure_future(read_all(follower.entries(k, "0-0", ends))) for k in keys]
        await asyncio.sleep(0.3)
        before = calls
        async with redis.pipeline(transaction=True) as pipe:  # an entry in each, at once
            for key in keys:
                pipe.xadd(key, {"n": "1", "end": "1"}, id="0-1")
            await pipe.execute()
        got = await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert got == [[1]] * len(keys)
        # 30 readers of 30 streams: one XREAD at a time, and one or two for all 30 entries
        assert most_in_flight == 1
        assert calls - before <= 2, calls - before
    finally:
        await follower.close()
        await redis.delete(*keys)
        await redis.aclose()


async def test_a_reader_that_falls_behind_is_told_and_resumes_from_its_position(
    redis_server: Proc,
) -> None:
    redis = await client(redis_server)
    follower = StreamFollower(redis, keep, queue_size=10)
    key = f"test:follower:slow:{time.time_ns()}"
    try:
        entries = follower.entries(key, "0-0", ends)
        await redis.xadd(key, {"n": "1"}, id="0-1")
        position, _ = await anext(entries)  # the replay: attached now, then it stops reading
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(2, 200):
                pipe.xadd(key, {"n": str(n)}, id=f"0-{n}")
            await pipe.execute()
        await asyncio.sleep(0.5)  # the follower fills its queue of 10 and overflows it
        positions = [position]

        async def keep_reading() -> None:
            async for at, _ in entries:
                positions.append(at)

        with pytest.raises(FellBehind):
            await keep_reading()
        position = positions[-1]
        await redis.xadd(key, {"n": "200", "end": "1"}, id="0-200")
        rest = await read_all(follower.entries(key, position, ends))
        assert rest == list(range(int(position.split("-")[1]) + 1, 201))  # nothing lost
    finally:
        await follower.close()
        await redis.delete(key)
        await redis.aclose()


@pytest.mark.parametrize("written", [11, 15, 40])
async def test_a_reader_just_past_its_queue_never_reads_across_a_gap(
    redis_server: Proc, written: int
) -> None:
    """A queue of 10 overflowing by one or a few: the reader is told before it reads on
    past a dropped entry (it once lost the entry after the ones it had queued)."""
    redis = await client(redis_server)
    follower = StreamFollower(redis, keep, queue_size=10)
    key = f"test:follower:gap:{time.time_ns()}:{written}"
    try:
        entries = follower.entries(key, "0-0", ends)
        await redis.xadd(key, {"n": "1"}, id="0-1")
        got = [int((await anext(entries))[1][b"n"])]
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(2, 2 + written):
                pipe.xadd(key, {"n": str(n)}, id=f"0-{n}")
            await pipe.execute()
        await asyncio.sleep(0.5)

        async def keep_reading() -> None:
            async for _, fields in entries:
                got.append(int(fields[b"n"]))

        with pytest.raises(FellBehind):
            await keep_reading()
        assert got == list(range(1, len(got) + 1))  # what it got has no gap
    finally:
        await follower.close()
        await redis.delete(key)
        await redis.aclose()


async def test_a_live_entry_is_decoded_once_for_every_reader_of_the_process(
    redis_server: Proc,
) -> None:
    redis = await client(redis_server)
    decoded: list[str] = []

    def counting(entry_id: str, fields: Fields) -> Fields:
        decoded.append(entry_id)
        return fields

    follower = StreamFollower(redis, counting)
    key = f"test:follower:decode:{time.time_ns()}"
    try:
        readers = [
            asyncio.ensure_future(read_all(follower.entries(key, "0-0", ends))) for _ in range(50)
        ]
        await asyncio.sleep(0.3)  # all attached, nothing to replay: every entry comes live
        for n in range(1, 21):
            await redis.xadd(key, {"n": str(n), **({"end": "1"} if n == 20 else {})}, id=f"0-{n}")
        got = await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert got == [list(range(1, 21))] * 50
        assert len(decoded) == 20  # not 50 x 20
    finally:
        await follower.close()
        await redis.delete(key)
        await redis.aclose()


def test_entry_ids_sort_as_redis_orders_them() -> None:
    assert id_key("0-10") > id_key("0-9")
    assert id_key("1700000000000-0") > id_key("0-999999")
