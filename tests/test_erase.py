"""DELETE /scores/{userId}: erase from the live board, the stream, and the database."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from scoreboard import board as board_mod
from scoreboard import keys
from scoreboard.board import Board
from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .conftest import AiohttpClient, Tokens, new_user, settings_with
from .durable import pg, pg_store, push


async def post(
    client: TestClient[Any, Any], tokens: Tokens, user: str, delta: int, path: str = ""
) -> Any:
    headers, body = tokens.request(user, delta)
    r = await client.post(f"{path}/scores/increment", json=body, headers=headers)
    assert r.status == 200, await r.text()
    return await r.json()


def admin(tokens: Tokens) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.user(new_user(), 'scores:admin')}"}


async def test_delete_refusals(client: TestClient[Any, Any], tokens: Tokens) -> None:
    user = new_user()
    await post(client, tokens, user, 5)
    r = await client.delete(f"/scores/{user}")
    assert r.status == 401 and (await r.json())["error"] == "invalid_token"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await client.delete(f"/scores/{user}", headers={"Authorization": "Bearer nonsense"})
    assert r.status == 401
    # Not even the user themself may erase without the admin scope.
    own = {"Authorization": f"Bearer {tokens.user(user, 'scores:bonus')}"}
    r = await client.delete(f"/scores/{user}", headers=own)
    assert r.status == 403 and (await r.json())["error"] == "forbidden"
    r = await client.delete("/scores/not-a-uuid", headers=admin(tokens))
    assert r.status == 400 and (await r.json())["error"] == "bad_request"
    r = await client.delete(f"/scores/{new_user()}", headers=admin(tokens))
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    assert (await client.get(f"/scores/{user}")).status == 200, "refusals changed nothing"


async def test_delete_removes_the_user_from_the_live_board(
    client: TestClient[Any, Any], tokens: Tokens
) -> None:
    users = [new_user() for _ in range(3)]
    for i, u in enumerate(users):
        await post(client, tokens, u, 10 * (i + 1))
    before = await (await client.get("/scores/top")).json()
    r = await client.delete(f"/scores/{users[2]}", headers=admin(tokens))
    assert r.status == 204 and await r.read() == b""
    assert (await client.get(f"/scores/{users[2]}")).status == 404
    after = await (await client.get("/scores/top")).json()
    assert [e["userId"] for e in after["entries"]] == [users[1], users[0]]
    assert [e["rank"] for e in after["entries"]] == [1, 2]
    assert after["version"] > before["version"]
    r = await client.delete(f"/scores/{users[2]}", headers=admin(tokens))
    assert r.status == 404, "a second erase finds nothing"
    # A user erased can play again, from zero.
    data = await post(client, tokens, users[2], 1)
    assert (data["score"], data["previousRank"]) == (1, None)


async def test_delete_on_a_board_publishes_erase(
    client: TestClient[Any, Any], tokens: Tokens, redis_url: str
) -> None:
    board = f"t-{secrets.token_hex(4)}"
    user = new_user()
    await post(client, tokens, user, 3, path=f"/boards/{board}")
    sub: Any = aioredis.Redis.from_url(redis_url)
    pubsub = sub.pubsub()
    await pubsub.subscribe(keys.channel(board))
    try:
        r = await client.delete(f"/boards/{board}/scores/{user}", headers=admin(tokens))
        assert r.status == 204
        message = None
        for _ in range(50):
            m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if m is not None:
                message = orjson.loads(m["data"])
                break
        assert message is not None
        top = await (await client.get(f"/boards/{board}/scores/top")).json()
        assert message == {
            "type": "erase",
            "boardId": board,
            "userId": user,
            "version": top["version"],
            "topChanged": True,
            "ts": message["ts"],
        }
        assert top["entries"] == []
        assert (await client.get(f"/scores/{user}")).status == 404
    finally:
        await pubsub.aclose()
        await sub.aclose()


async def test_erase_below_the_top_100_keeps_the_version(redis_url: str) -> None:
    client = board_mod.connect(redis_url)
    live = Board(client, leeway_s=10, rate_limit_per_min=0)
    try:
        users = [str(uuid.uuid4()) for _ in range(102)]
        for i, u in enumerate(users):
            await push(live, u, 1000 - i)
        version = (await live.snapshot("global")).version
        erased = await live.erase("global", users[-1])
        assert erased is not None and erased.version == version and not erased.top_changed
        erased = await live.erase("global", users[50])
        assert erased is not None and erased.version == erased.seq > version
        assert not erased.top_changed, "position 51 is outside the top-10"
        assert await live.erase("global", users[50]) is None
        entries = await client.xrange(keys.BoardKeys("global").events, "-", "+")
        kinds = [f[b"k"] for _, f in entries]
        assert kinds.count(b"erase") == 2
    finally:
        await client.aclose()


async def test_delete_anonymises_the_database(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens, pg_url: str
) -> None:
    await (await pg_store(pg_url)).close()
    app = create_app(settings_with(settings, database_url=pg_url, sink=True))
    client = await aiohttp_client(app)
    gone, stays = new_user(), new_user()
    for _ in range(2):
        await post(client, tokens, gone, 4)
        await post(client, tokens, stays, 1)
    r = await client.delete(f"/scores/{gone}", headers=admin(tokens))
    assert r.status == 204
    for _ in range(100):
        rows = pg(pg_url, "SELECT user_id::text, score FROM user_scores")
        events = pg(pg_url, "SELECT count(*), count(user_id) FROM score_events")
        if rows == [(stays, 2)] and events == [(4, 2)]:
            break
        await asyncio.sleep(0.1)
    assert rows == [(stays, 2)]
    assert events == [(4, 2)], "the erased user's events keep their deltas, not the id"
    assert pg(pg_url, "SELECT sum(delta) FROM score_events WHERE user_id IS NULL") == [(8,)]
