"""/readyz checks the database too; startup warns about a Redis that could evict nonces."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from scoreboard import board as board_mod
from scoreboard.config import Settings
from scoreboard.http.app import create_app
from scoreboard.sink import redis_durability_warnings

from .conftest import AiohttpClient, settings_with
from .servers import RedisServer


async def test_ready_with_both(client: TestClient[Any, Any]) -> None:
    r = await client.get("/readyz")
    assert r.status == 200
    assert await r.json() == {"redis": "ok", "database": "ok"}


async def test_ready_with_postgres(
    aiohttp_client: AiohttpClient, settings: Settings, pg_url: str
) -> None:
    client = await aiohttp_client(create_app(settings_with(settings, database_url=pg_url)))
    r = await client.get("/readyz")
    assert r.status == 200 and await r.json() == {"redis": "ok", "database": "ok"}


async def test_not_ready_without_the_database(
    aiohttp_client: AiohttpClient, settings: Settings, unused_tcp_port: int
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x"
    client = await aiohttp_client(create_app(settings_with(settings, database_url=url)))
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 503
    assert body["redis"] == "ok"
    assert body["database"] != "ok" and 0 < len(body["database"]) <= 120


async def test_eviction_policy_warning() -> None:
    server = RedisServer(args=("--maxmemory-policy", "allkeys-lru")).start()
    client = board_mod.connect(server.url)
    try:
        warnings = await redis_durability_warnings(client)
        assert len(warnings) == 2
        assert "allkeys-lru" in warnings[0] and "noeviction" in warnings[0]
        assert "appendonly" in warnings[1]
        await client.config_set("maxmemory-policy", "volatile-ttl")
        warnings = await redis_durability_warnings(client)
        assert "volatile-ttl" in warnings[0], "nonce keys have a TTL: volatile-* evicts them"
        await client.config_set("maxmemory-policy", "noeviction")
        assert len(await redis_durability_warnings(client)) == 1
    finally:
        await client.aclose()
        server.cleanup()
