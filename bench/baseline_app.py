"""The bare baseline: an aiohttp app that parses a small JSON POST and answers JSON."""

from __future__ import annotations

import sys

import orjson
from aiohttp import web


async def post(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(
        body=orjson.dumps({"userId": body.get("userId"), "score": 1, "rank": 1}),
        content_type="application/json",
    )


async def get(request: web.Request) -> web.Response:
    return web.Response(body=b'{"entries":[],"version":0}', content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/scores/increment", post)
    app.router.add_get("/scores/top", get)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
