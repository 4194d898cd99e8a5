"""The durable side of `scoreboard serve`: the store, the in-process sink, the startup checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import suppress

from aiohttp import web

from .. import board as board_mod
from ..persist import make_store
from ..persist.progress import Quiet
from ..persist.reseed import Reseeder, nonce_window_s
from ..sink import Sink, SinkOptions, redis_durability_warnings
from .state import BOARD, METRICS, SETTINGS, SINK, STORE

logger = logging.getLogger(__name__)

# On shutdown the embedded sink gets this long to commit what the in-process Redis holds.
EMBEDDED_DRAIN_S = 10.0
STOP_TIMEOUT_S = 5.0


async def durability_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the store; in embedded mode reload the board from it; run the sink if enabled."""
    settings = app[SETTINGS]
    client = app[BOARD].client
    store = make_store(settings)
    await store.open()
    app[STORE] = store
    sink_client: board_mod.RedisClient | None = None
    sink: Sink | None = None
    task: asyncio.Task[None] | None = None
    try:
        if settings.embedded_redis:
            # The in-process Redis starts empty: the board comes back from the store.
            await store.migrate()
            done = await Reseeder(
                client, store, nonce_window_s=nonce_window_s(settings), progress=Quiet()
            ).run()
            for r in done:
                logger.info(
                    "embedded board %s reloaded: %d users, version %d", r.board, r.users, r.version
                )
        else:
            for warning in await redis_durability_warnings(client):
                logger.warning(warning)
        if settings.sink:
            if settings.embedded_redis:
                sink_client = client
            else:
                # Its own connections: blocking stream reads never wait for the hot path's pool.
                sink_client = board_mod.connect(settings.redis_url, cluster=settings.redis_cluster)
            sink = Sink(sink_client, store, app[METRICS], SinkOptions())
            app[SINK] = sink
            task = asyncio.create_task(sink.run(), name="scoreboard-sink")
        yield
    finally:
        if sink is not None and task is not None:
            if settings.embedded_redis and not task.done():
                # Whatever the sink has not committed dies with this process.
                if not await sink.drain(EMBEDDED_DRAIN_S):
                    logger.error("embedded shutdown: %d events were not saved", sink.lag)
            sink.stop()
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
            except TimeoutError:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            except Exception:
                logger.exception("the sink failed")
        if sink_client is not None and sink_client is not client:
            await sink_client.aclose()
        await store.close()
