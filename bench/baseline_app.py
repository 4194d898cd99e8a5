"""The bare baseline: an aiohttp app that parses a small JSON POST and answers JSON.

    python bench/baseline_app.py PORT [--busy-us N] [--uvloop]

--busy-us N makes every request spin N µs of CPU first: a control that does a handler's
worth of extra work and nothing else (throughput.py). --uvloop runs it on uvloop's
event loop, as `scoreboard serve` runs (instructions.py): the baseline as the issue
defines it is plain aiohttp, but only the uvloop one shows our own code's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

BUSY_S = 0.0


def _busy() -> None:
    if BUSY_S:
        end = time.perf_counter() + BUSY_S
        while time.perf_counter() < end:
            pass


async def post(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    _busy()
    return web.Response(
        body=orjson.dumps({"userId": body.get("userId"), "score": 1, "rank": 1}),
        content_type="application/json",
    )


async def get(request: web.Request) -> web.Response:
    _busy()
    return web.Response(body=b'{"entries":[],"version":0}', content_type="application/json")


def main() -> None:
    global BUSY_S
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("port", type=int)
    ap.add_argument("--busy-us", type=int, default=0)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    BUSY_S = args.busy_us / 1e6
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application()
    app.router.add_post("/scores/increment", post)
    app.router.add_get("/scores/top", get)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
