"""The app on a real loopback port (for clients that are not asyncio), and what is not routed yet."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from scoreboard.http.runner import Runner

# Described in scoreboard/http/spec.py but not registered on this branch yet (each entry
# makes tests/http/test_spec.py expect the route to be missing). Everything is routed now.
NOT_ROUTED_YET: set[tuple[str, str]] = set()


class ServerThread:
    """The app on 127.0.0.1:<free port>, served from its own event loop in a thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = Runner(app, access_log=None)
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
