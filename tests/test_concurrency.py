"""Concurrent increments over HTTP: exact totals, and one nonce applied exactly once."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson

from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .conftest import AiohttpClient, Tokens, new_user, settings_with


async def test_1000_increments_from_40_users(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    s = settings_with(settings, rate_limit_per_min=0)
    client = await aiohttp_client(create_app(s))
    tokens = Tokens(s)
    users = [new_user() for _ in range(40)]
    rng = random.Random(7)
    requests = []
    expected = dict.fromkeys(users, 0)
    for i in range(1000):
        user = users[i % 40]
        delta = rng.randint(1, 1000)
        expected[user] += delta
        requests.append(tokens.request(user, delta))

    async def send(headers: dict[str, str], body: dict[str, Any]) -> int:
        r = await client.post("/scores/increment", data=orjson.dumps(body), headers=headers)
        await r.read()
        return r.status

    statuses = await asyncio.gather(*(send(h, b) for h, b in requests))
    assert statuses.count(200) == 1000
    r = await client.get("/scores/top?limit=40")
    entries = (await r.json())["entries"]
    assert {e["userId"]: e["score"] for e in entries} == expected
    print(
        f"\n1000 concurrent increments from 40 users: {statuses.count(200)} applied, totals exact"
    )


async def test_20_concurrent_requests_with_one_nonce(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings))
    tokens = Tokens(settings)
    user = new_user()
    headers, body = tokens.request(user, 17)

    async def send() -> tuple[int, Any]:
        r = await client.post("/scores/increment", data=orjson.dumps(body), headers=headers)
        return r.status, await r.json()

    results = await asyncio.gather(*(send() for _ in range(20)))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] + [409] * 19
    ok = next(d for s, d in results if s == 200)
    for status, data in results:
        if status == 409:
            assert data["original"]["eventId"] == ok["eventId"]
    r = await client.get(f"/scores/{user}")
    assert (await r.json())["score"] == 17
