"""The broadcaster: coalescing, encoding once, back-pressure, slow clients, Redis restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from scoreboard import hub as hub_mod
from scoreboard import live as live_mod
from scoreboard.config import Settings
from scoreboard.http.state import BROADCASTER

from .conftest import AiohttpClient, Tokens, new_user, settings_with
from .servers import RedisServer
from .streams import (
    WS_UPGRADE,
    RawSse,
    event_data,
    eventually,
    increment,
    live_app,
    new_board,
    next_event,
    read_event,
    stalled_client,
)


async def _sse_clients(client: TestClient[Any, Any], path: str, n: int) -> list[RawSse]:
    readers = [RawSse(client.server.host, client.server.port, path) for _ in range(n)]
    gate = asyncio.Semaphore(50)

    async def connect_one(reader: RawSse) -> None:
        async with gate:
            await reader.connect()

    await asyncio.gather(*(connect_one(r) for r in readers))
    return readers


def _all_hold(readers: list[RawSse], version: int) -> Callable[[], bool]:
    return lambda: all(r.version >= version for r in readers)


async def test_a_burst_of_changes_is_read_once_and_sent_once(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await aiohttp_client(live_app(settings))
    live = client.app[BROADCASTER]
    board = new_board()
    await increment(client, tokens, new_user(), 5, board)
    async with client.get(f"/boards/{board}/scores/stream") as r:
        await read_event(r.content)
        assert (await read_event(r.content)).startswith("id: 1\n")
        reads = 0
        snapshot = live.hub._board.snapshot

        async def counting(name: str) -> Any:
            nonlocal reads
            reads += 1
            return await snapshot(name)

        monkeypatch.setattr(live.hub._board, "snapshot", counting)
        await increment(client, tokens, new_user(), 9, board)
        # A hundred top-changing messages at once, as from a busy board.
        message = {"type": "top", "topChanged": True, "version": 2}
        for _ in range(100):
            live.on_message(board, message)
        block = await next_event(r.content, "top")
        assert block.startswith("id: 2\n")
        with pytest.raises(TimeoutError):
            await read_event(r.content, within=0.4)
        # One read for the burst, at most one more for the change's own Pub/Sub message.
        assert 1 <= reads <= 2


async def test_each_change_is_encoded_once_for_every_client(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await aiohttp_client(live_app(settings))
    board = new_board()
    path = f"/boards/{board}/scores/stream"
    readers = await _sse_clients(client, path, 20)
    tasks = [asyncio.create_task(r.run()) for r in readers]
    sockets = [await client.ws_connect(f"/boards/{board}/scores/ws") for _ in range(5)]
    for ws in sockets:
        await ws.receive_json(timeout=2)
    await eventually(lambda: all(r.version == 0 for r in readers))
    built = 0
    original = live_mod.Frame.top

    def counting(cached: Any, *, resync: bool = False) -> live_mod.Frame:
        nonlocal built
        built += 1
        return original(cached, resync=resync)

    monkeypatch.setattr(live_mod.Frame, "top", counting)
    await increment(client, tokens, new_user(), 3, board)
    await eventually(lambda: all(r.version == 1 for r in readers))
    for ws in sockets:
        assert (await ws.receive_json(timeout=2))["version"] == 1
        await ws.close()
    assert built == 1
    for r in readers:
        r.close()
    await asyncio.gather(*tasks)


async def test_500_clients_get_each_change_while_a_stalled_one_is_cut_off(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens
) -> None:
    stall_s = 1.0
    app = live_app(
        settings_with(settings, stream_max_clients_per_ip=1000, rate_limit_per_min=0),
        stall_timeout_s=stall_s,
        write_high_water=4096,
        send_buffer=4096,
        ping_interval_s=30,
    )
    client = await aiohttp_client(app)
    live = app[BROADCASTER]
    board = new_board()
    users = [new_user() for _ in range(10)]
    for i, user in enumerate(users):  # a full top-10 makes each frame about 1 KiB
        await increment(client, tokens, user, 100 + i, board)
    path = f"/boards/{board}/scores/stream"
    readers = await _sse_clients(client, path, 500)
    tasks = [asyncio.create_task(r.run()) for r in readers]
    stalled = stalled_client(client.server.host, client.server.port, path)
    try:
        await eventually(lambda: live.client_count == 501)
        behind_at: float | None = None
        cut_at: float | None = None
        slowest = 0.0
        for i in range(600):
            start = time.monotonic()
            await increment(client, tokens, users[i % 10], 1, board)
            version = live.hub.latest(board)
            # Every reading client holds this change (or a newer one) quickly...
            await eventually(_all_hold(readers, version), within=2)
            slowest = max(slowest, time.monotonic() - start)
            now = time.monotonic()
            if behind_at is None and any(c.behind for c in live.clients(board)):
                behind_at = now
            if live.cut_offs:
                cut_at = now
                break
            await asyncio.sleep(0.02)
        # ...and the one that stopped reading fell behind, then was cut off within the bound.
        assert behind_at is not None and cut_at is not None
        assert cut_at - behind_at <= stall_s + 0.5
        assert slowest < 1.0, f"a change took {slowest:.3f} s to reach every client"
        await eventually(lambda: live.client_count == 500)
        # The next change still reaches all 500.
        await increment(client, tokens, users[0], 5, board)
        version = live.hub.latest(board)
        await eventually(_all_hold(readers, version), within=1)
    finally:
        stalled.close()
        for r in readers:
            r.close()
        await asyncio.gather(*tasks)


async def test_a_client_whose_score_queue_overflows_is_cut_off(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens
) -> None:
    app = live_app(
        settings_with(settings, rate_limit_per_min=0),
        score_queue=4,
        stall_timeout_s=60,
        write_high_water=1024,
        send_buffer=4096,
    )
    client = await aiohttp_client(app)
    live = app[BROADCASTER]
    board = new_board()
    user = new_user()
    path = f"/boards/{board}/scores/stream?userId={user}"
    stalled = stalled_client(client.server.host, client.server.port, path)
    try:
        await eventually(lambda: live.client_count == 1)
        start = time.monotonic()
        for _ in range(500):
            await increment(client, tokens, user, 1, board)
            if live.cut_offs:
                break
        # Long before the 60 s stall bound: the queue, not the socket timer, did it.
        assert live.cut_offs == 1
        assert time.monotonic() - start < 10
        await eventually(lambda: live.client_count == 0)
    finally:
        stalled.close()


async def test_clients_keep_getting_updates_across_a_redis_restart(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens
) -> None:
    server = RedisServer().start()
    try:
        app = live_app(settings_with(settings, redis_url=server.url))
        client = await aiohttp_client(app)
        board = new_board()
        alice, bob = new_user(), new_user()
        await increment(client, tokens, alice, 5, board)
        async with client.get(f"/boards/{board}/scores/stream") as r:
            await read_event(r.content)
            assert (await read_event(r.content)).startswith("id: 1\n")
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
            # The restarted Redis kept nothing: after resubscribing, the client is told so.
            block = await next_event(r.content, "top", within=10)
            assert orjson.loads(event_data(block))["entries"] == []
            # And changes flow again once the store answers.
            async with asyncio.timeout(10):
                while True:
                    headers, body = tokens.request(bob, 8)
                    async with client.post(
                        f"/boards/{board}/scores/increment", json=body, headers=headers
                    ) as posted:
                        if posted.status == 200:
                            break
                    await asyncio.sleep(0.1)
            block = await next_event(r.content, "top", within=3)
            entries = orjson.loads(event_data(block))["entries"]
            assert [(e["userId"], e["score"]) for e in entries] == [(bob, 8)]
    finally:
        await asyncio.to_thread(server.cleanup)


async def test_a_change_the_connect_snapshot_showed_is_not_sent_again(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens
) -> None:
    client = await aiohttp_client(live_app(settings))
    live = client.app[BROADCASTER]
    board = new_board()
    user = new_user()
    await increment(client, tokens, user, 5, board)
    async with client.get(f"/boards/{board}/scores/stream") as r:
        await read_event(r.content)
        assert (await read_event(r.content)).startswith("id: 1\n")
        # The change's own message, late: the snapshot already had it.
        message = {"type": "top", "topChanged": True, "version": 1}
        live.on_message(board, message)
        with pytest.raises(TimeoutError):
            await read_event(r.content, within=0.4)
        assert live.broadcasts >= 1


async def test_a_stalled_websocket_client_is_cut_off_too(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens
) -> None:
    app = live_app(
        settings_with(settings, rate_limit_per_min=0),
        stall_timeout_s=0.5,
        write_high_water=1024,
        send_buffer=4096,
    )
    client = await aiohttp_client(app)
    live = app[BROADCASTER]
    board = new_board()
    users = [new_user() for _ in range(10)]
    for i, user in enumerate(users):
        await increment(client, tokens, user, 100 + i, board)
    path = f"/boards/{board}/scores/ws"
    stalled = stalled_client(client.server.host, client.server.port, path, WS_UPGRADE)
    try:
        async with client.ws_connect(path) as healthy:
            await healthy.receive_json(timeout=2)
            await eventually(lambda: live.client_count == 2)
            behind_at = cut_at = 0.0
            for i in range(500):
                await increment(client, tokens, users[i % 10], 1, board)
                # The reader keeps up with every change regardless.
                assert (await healthy.receive_json(timeout=2))["type"] == "top"
                now = time.monotonic()
                if not behind_at and any(c.behind for c in live.clients(board)):
                    behind_at = now
                if live.cut_offs:
                    cut_at = now
                    break
                await asyncio.sleep(0.01)
            assert live.cut_offs == 1 and behind_at
            assert cut_at - behind_at < 0.5 + 0.5
            await eventually(lambda: live.client_count == 1)
    finally:
        stalled.close()


async def test_score_changes_are_received_only_while_a_user_is_watched(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens
) -> None:
    client = await aiohttp_client(live_app(settings))
    live = client.app[BROADCASTER]
    hub = live.hub
    await asyncio.wait_for(hub.ready.wait(), 5)
    top_only = {p.encode() for p in hub_mod.TOP_PATTERNS}
    assert set(hub._pubsub.patterns) == top_only
    board, user = new_board(), new_user()
    await increment(client, tokens, new_user(), 50, board)
    received: list[dict[str, Any]] = []
    hub.add_listener(lambda _board, message: received.append(message))
    # Nobody watches a user: this process reads top changes (each of these is one: the
    # board has two users), not the score changes themselves.
    await increment(client, tokens, user, 1, board)
    await increment(client, tokens, user, 1, board)
    await asyncio.sleep(0.3)
    assert [m["type"] for m in received] == ["top", "top"]
    async with client.get(f"/boards/{board}/scores/stream?userId={user}") as r:
        # The subscription is confirmed before the snapshot goes out.
        assert set(hub._pubsub.patterns) == top_only | {p.encode() for p in hub_mod.SCORE_PATTERNS}
        await next_event(r.content, "top")
        await increment(client, tokens, user, 3, board)
        score = orjson.loads(event_data(await next_event(r.content, "score")))
        assert (score["userId"], score["score"], score["delta"]) == (user, 5, 3)
    await eventually(lambda: not hub._scores_on.is_set())
    assert set(hub._pubsub.patterns) == top_only
