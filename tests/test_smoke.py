from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from .conftest import Tokens, new_user


async def test_increment_then_top(client: TestClient[Any, Any], tokens: Tokens) -> None:
    user = new_user()
    headers, body = tokens.request(user, 7)
    r = await client.post("/scores/increment", json=body, headers=headers)
    assert r.status == 200, await r.text()
    data = await r.json()
    assert data["score"] == 7 and data["rank"] == 1 and data["previousRank"] is None
    r = await client.get("/scores/top")
    top = await r.json()
    assert top["entries"] == [{"rank": 1, "userId": user, "score": 7}]
