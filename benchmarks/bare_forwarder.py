"""The baseline of benchmarks/chat_proxy.py: a minimal aiohttp pass-through, no Sluice core.

python -m benchmarks.bare_forwarder PORT UPSTREAM_BASE_URL [UPSTREAM_BASE_URL ...]

With several upstreams, each request goes to the next (round robin): the floor for a proxy
in front of a fleet, whose upstreams are as loaded as the fleet's (a less loaded upstream
sends more, smaller chunks: more reads for any proxy).
"""

from __future__ import annotations

import itertools
import sys

import aiohttp
import uvloop
from aiohttp import web


def make_app(upstreams: list[str]) -> web.Application:
    app = web.Application()
    turn = itertools.cycle(upstreams)

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=1000)
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        headers = {"content-type": "application/json"}
        upstream = next(turn)
        async with session.post(f"{upstream}/chat/completions", data=body, headers=headers) as up:
            response = web.StreamResponse(
                status=up.status, headers={"content-type": up.headers["content-type"]}
            )
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/healthz", health)
    return app


if __name__ == "__main__":
    uvloop.install()
    web.run_app(
        make_app(sys.argv[2:]), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None
    )
