"""The service on a real three-master Redis Cluster started on loopback for these tests."""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import ClusterNode

from scoreboard import keys
from scoreboard.board import Board, ClusterSubscriber, connect, node_url
from scoreboard.config import Settings
from scoreboard.errors import StoreUnavailable
from scoreboard.http.app import create_app
from scoreboard.http.state import BOARD, HUB
from scoreboard.metrics import Metrics
from scoreboard.sink import Sink

from .cluster import RedisClusterServers
from .conftest import ACTION_SECRET, JWT_SECRET, AiohttpClient, Tokens, new_user
from .durable import FAST, db_totals, live_scores, pg_store, push
from .streams import event_data, next_event

# Boards whose hash tags fall on every node of a three-master cluster (checked below).
BOARDS = ("global", "season-1", "season-2", "eu", "us", "asia")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers().start()
    try:
        yield servers
    finally:
        servers.cleanup()


@pytest.fixture
def cluster_settings(cluster: RedisClusterServers, tmp_path: Path) -> Iterator[Settings]:
    cluster.flush()
    yield Settings(
        redis_url=cluster.url,
        redis_cluster=True,
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        data_dir=str(tmp_path / "data"),
        sink=False,
        log_format="json",
        rate_limit_per_min=0,
    )
    cluster.flush()


@pytest.fixture
def ctokens(cluster_settings: Settings) -> Tokens:
    return Tokens(cluster_settings)


@pytest.fixture
async def cclient(
    aiohttp_client: AiohttpClient, cluster_settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    yield await aiohttp_client(create_app(cluster_settings))


def _path(board: str, route: str) -> str:
    return route if board == keys.GLOBAL_BOARD else f"/boards/{board}{route}"


async def _increment(
    client: TestClient[Any, Any], tokens: Tokens, board: str, user: str, delta: int
) -> dict[str, Any]:
    headers, body = tokens.request(user, delta)
    r = await client.post(_path(board, "/scores/increment"), json=body, headers=headers)
    assert r.status == 200, await r.text()
    data: dict[str, Any] = await r.json()
    return data


def test_boards_spread_over_every_node(cluster: RedisClusterServers) -> None:
    owners = {cluster.owner(keys.BoardKeys(b).scores) for b in BOARDS}
    assert owners == {0, 1, 2}


async def test_increments_and_ranks_on_many_boards(
    cclient: TestClient[Any, Any], ctokens: Tokens, cluster: RedisClusterServers
) -> None:
    users = [new_user() for _ in range(5)]
    expected: dict[str, dict[str, int]] = {}
    for n, board in enumerate(BOARDS):
        totals = expected.setdefault(board, {})
        # Different totals per board, with one tie, so ranks differ board by board.
        for i, user in enumerate(users):
            for delta in (10 * ((i + n) % 5) + 1, 5):
                data = await _increment(cclient, ctokens, board, user, delta)
                totals[user] = totals.get(user, 0) + delta
                assert data["score"] == totals[user]
        # Tie the first two users: tied users share a rank.
        low, high = sorted(users[:2], key=lambda u: totals[u])
        if totals[high] > totals[low]:
            await _increment(cclient, ctokens, board, low, totals[high] - totals[low])
            totals[low] = totals[high]

    for board, totals in expected.items():
        order = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        want = [
            {"rank": 1 + sum(1 for s in totals.values() if s > score), "userId": u, "score": score}
            for u, score in order
        ]
        r = await cclient.get(_path(board, "/scores/top"))
        assert r.status == 200
        assert (await r.json())["entries"] == want
        r = await cclient.get(_path(board, "/scores/top") + "?limit=2&offset=2")
        assert (await r.json())["entries"] == want[2:4]
        for entry in want:
            r = await cclient.get(_path(board, f"/scores/{entry['userId']}"))
            assert await r.json() == entry
        r = await cclient.get(_path(board, f"/scores/{order[2][0]}/around") + "?n=1")
        assert (await r.json())["entries"] == want[1:4]

    # Each board's keys live together on its node, and boards live on several nodes.
    holders: dict[str, set[int]] = {}
    for i in range(len(cluster.nodes)):
        with cluster.client(i) as c:
            for key in c.scan_iter(match="sb:{*", count=1000):
                board = key.decode().split("{", 1)[1].split("}", 1)[0]
                holders.setdefault(board, set()).add(i)
    assert set(holders) == set(BOARDS)
    assert all(len(nodes) == 1 for nodes in holders.values()), holders
    assert len(set().union(*holders.values())) == 3
    with cluster.client(cluster.owner(keys.BOARDS_KEY)) as c:
        assert {b.decode() for b in c.smembers(keys.BOARDS_KEY)} == set(BOARDS)


async def test_replay_refused_on_every_node(cclient: TestClient[Any, Any], ctokens: Tokens) -> None:
    for board in BOARDS:
        user = new_user()
        headers, body = ctokens.request(user, 7)
        url = _path(board, "/scores/increment")
        first = await cclient.post(url, json=body, headers=headers)
        assert first.status == 200
        applied = await first.json()
        again = await cclient.post(url, json=body, headers=headers)
        assert again.status == 409
        refused = await again.json()
        assert refused["error"] == "replay"
        assert refused["original"] == {
            "eventId": applied["eventId"],
            "score": 7,
            "rank": 1,
        }
        r = await cclient.get(_path(board, f"/scores/{user}"))
        assert (await r.json())["score"] == 7


async def test_scripts_reload_after_a_flush_on_every_node(
    cclient: TestClient[Any, Any], ctokens: Tokens, cluster: RedisClusterServers
) -> None:
    await _increment(cclient, ctokens, "eu", new_user(), 1)
    for i in range(len(cluster.nodes)):
        with cluster.client(i) as c:
            c.script_flush()
    users = [new_user() for _ in range(12)]
    results = await asyncio.gather(
        *(_increment(cclient, ctokens, BOARDS[n % len(BOARDS)], u, 3) for n, u in enumerate(users))
    )
    assert [r["score"] for r in results] == [3] * len(users)


async def test_live_messages_from_every_node_reach_the_hub(
    cclient: TestClient[Any, Any], ctokens: Tokens
) -> None:
    app = cclient.app
    assert app is not None
    hub = app[HUB]
    seen: dict[str, list[dict[str, Any]]] = {}
    hub.add_listener(lambda board, msg: seen.setdefault(board, []).append(msg))
    await asyncio.wait_for(hub.ready.wait(), 10)
    boards = [f"t-{secrets.token_hex(4)}" for _ in range(9)]
    for board in boards:
        await _increment(cclient, ctokens, board, new_user(), 4)
    # Each board's first score changes its top: one message on its top channel.
    for _ in range(100):
        if all(seen.get(b) for b in boards):
            break
        await asyncio.sleep(0.05)
    for board in boards:
        msgs = seen.get(board, [])
        assert len(msgs) == 1, (board, msgs)
        assert msgs[0]["type"] == "top" and msgs[0]["boardId"] == board
    # The boards really were on different nodes.
    store = app[BOARD]
    owners = {store.client.get_node_from_key(keys.BoardKeys(b).scores).name for b in boards}
    assert len(owners) > 1
    # And the hub's cache follows each board's version.
    for board in boards:
        top = await hub.top(board)
        assert top.version >= 1 and len(top.snapshot.entries) == 1


async def test_subscriber_rotates_over_the_known_nodes(cluster: RedisClusterServers) -> None:
    client = connect(cluster.url, cluster=True)
    subscriber = ClusterSubscriber(cluster.url, client)
    try:
        # Before the topology is known: the URL's own node.
        assert subscriber.nodes() == [("127.0.0.1", cluster.nodes[0].port)]
        await client.ping()
        ports = {p for _, p in subscriber.nodes()}
        assert ports == {n.port for n in cluster.nodes}
        seen = set()
        for _ in range(3):
            pubsub = subscriber.pubsub()
            await pubsub.psubscribe(keys.CHANNEL_PREFIX + ".*")
            seen.add(pubsub.connection.port)
            await pubsub.aclose()
        assert seen == ports
    finally:
        await subscriber.aclose()
        await client.aclose()


def test_node_url_keeps_credentials_and_options() -> None:
    assert node_url("redis://u:p%40ss@a:7000/0?ssl_cert_reqs=none", "10.0.0.2", 7001) == (
        "redis://u:p%40ss@10.0.0.2:7001?ssl_cert_reqs=none"
    )
    assert node_url("rediss://b:7000", "::1", 7002) == "rediss://[::1]:7002"


async def test_a_dead_shard_fails_its_boards_only(tmp_path: Path) -> None:
    """With full coverage off, boards on the surviving nodes keep working and the lost
    node's boards answer store_unavailable (500), never an unhandled error. The node
    lost is the one holding the board set `sb:boards`, which every board's increments
    refresh now and then: that must not take the other nodes' boards down with it."""
    servers = RedisClusterServers(node_timeout_ms=500, full_coverage=False).start()
    client = connect(servers.url, cluster=True)
    store = Board(client, leeway_s=10, rate_limit_per_min=0)
    try:
        owner = {b: servers.owner(keys.BoardKeys(b).scores) for b in BOARDS}
        victim = servers.owner(keys.BOARDS_KEY)
        assert victim in owner.values()
        await store.ping()
        servers.nodes[victim].kill()
        for board in BOARDS:
            call = store.increment(
                board, new_user(), 1, secrets.token_hex(8), new_user(), "score", 2**31
            )
            if owner[board] == victim:
                with pytest.raises(StoreUnavailable):
                    await call
            else:
                assert (await call).score == 1
    finally:
        await store.aclose()
        # redis-py's cluster client swaps in new node objects when it refreshes the
        # topology after a node failure and leaves the old ones' connections open (a
        # known library issue): close every node object it ever made.
        for obj in gc.get_objects():
            if isinstance(obj, ClusterNode):
                with suppress(Exception):
                    await obj.disconnect()
        servers.cleanup()


def test_cluster_helper_sees_three_masters(cluster: RedisClusterServers) -> None:
    with cluster.client(0) as c:
        info: Any = c.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
    assert "cluster_state:ok" in text
    assert "cluster_size:3" in text


async def test_sink_drains_every_boards_stream(
    cluster: RedisClusterServers, cluster_settings: Settings, pg_url: str
) -> None:
    live = Board(connect(cluster.url, cluster=True), leeway_s=10, rate_limit_per_min=0)
    db = await pg_store(pg_url)
    sink = Sink(connect(cluster.url, cluster=True), db, Metrics(), FAST)
    users = [new_user() for _ in range(5)]
    try:
        for i in range(90):
            await push(live, users[i % 5], 1 + i % 4, board=BOARDS[i % len(BOARDS)])
        task = asyncio.create_task(sink.run())
        try:
            assert await sink.drain(20)
        finally:
            sink.stop()
            await asyncio.wait_for(task, 10)
        totals = db_totals(pg_url)
        assert totals["events"] == totals["ids"] == 90
        assert totals["sums"] == totals["scores"] == await live_scores(live, list(BOARDS))
        assert {b for b, _ in totals["scores"]} == set(BOARDS)
        for board in BOARDS:
            events = keys.BoardKeys(board).events
            assert (await live.client.xpending(events, keys.SINK_GROUP))["pending"] == 0
        assert sink.committed == 90
    finally:
        await sink.client.aclose()
        await db.close()
        await live.aclose()


async def test_serve_on_the_cluster_persists_through_its_sink(
    aiohttp_client: AiohttpClient, cluster_settings: Settings, ctokens: Tokens, pg_url: str
) -> None:
    await (await pg_store(pg_url)).close()  # `scoreboard migrate` ran before the deploy
    settings = replace(cluster_settings, database_url=pg_url, sink=True)
    client = await aiohttp_client(create_app(settings))
    users = [new_user() for _ in range(4)]
    expected: dict[tuple[str, str], int] = {}
    for i in range(24):
        board, user = BOARDS[i % len(BOARDS)], users[i % len(users)]
        data = await _increment(client, ctokens, board, user, 1 + i % 3)
        expected[(board, user)] = data["score"]
    deadline = time.monotonic() + 20
    while db_totals(pg_url)["scores"] != expected:
        assert time.monotonic() < deadline, db_totals(pg_url)
        await asyncio.sleep(0.1)
    assert db_totals(pg_url)["events"] == 24


async def test_sse_updates_for_boards_on_every_node(
    cclient: TestClient[Any, Any], ctokens: Tokens
) -> None:
    for board in BOARDS:
        user = new_user()
        async with cclient.get(_path(board, "/scores/stream") + f"?userId={user}") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = json.loads(event_data(await next_event(r.content, "top", within=5)))
            assert first["entries"] == []
            applied = await _increment(cclient, ctokens, board, user, 11)
            score = json.loads(event_data(await next_event(r.content, "score", within=5)))
            assert score["userId"] == user and score["eventId"] == applied["eventId"]
            top = json.loads(event_data(await next_event(r.content, "top", within=5)))
            assert top["entries"] == [{"rank": 1, "userId": user, "score": 11}]
