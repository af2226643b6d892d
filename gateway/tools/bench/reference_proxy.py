"""The pass-through scenario's reference: a minimal aiohttp reverse proxy on plain asyncio, with
no features at all (no signing, retries, breaker, metrics or log). The gateway, with all of its
features on, is measured against it: 18 lines of code from `HOP_BY_HOP` to the end of `main`.

    python -m gateway.tools.bench.reference_proxy PORT UPSTREAM_URL
"""

import sys
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}
SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def proxy(request: web.Request) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    url, body = request.app[UPSTREAM] + request.path_qs, await request.read()
    async with request.app[SESSION].request(request.method, url, headers=headers, data=body) as r:
        answer = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=r.status, body=await r.read(), headers=answer)


async def session(app: web.Application) -> AsyncIterator[None]:
    async with ClientSession() as app[SESSION]:
        yield


def main(port: int, upstream: str) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_route("*", "/{path:.*}", proxy)
    app.cleanup_ctx.append(session)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
