"""The embedded default: the in-process board is saved to SQLite and comes back on restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .conftest import ACTION_SECRET, JWT_SECRET, AiohttpClient, Tokens, new_user


def embedded(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        rate_limit_per_min=0,
        log_format="json",
    )


async def test_board_survives_a_restart(
    aiohttp_client: AiohttpClient, tmp_path: Path, tokens: Tokens
) -> None:
    settings = embedded(tmp_path)
    assert settings.embedded_redis and settings.embedded_database and settings.sink
    users = [new_user() for _ in range(5)]
    first = await aiohttp_client(create_app(settings))
    sent: list[Any] = []
    for i in range(25):
        headers, body = tokens.request(users[i % 5], 1 + i)
        r = await first.post("/scores/increment", json=body, headers=headers)
        assert r.status == 200
        sent.append((headers, body, await r.json()))
    admin = {"Authorization": f"Bearer {tokens.user(new_user(), 'scores:admin')}"}
    assert (await first.delete(f"/scores/{users[4]}", headers=admin)).status == 204
    top_before = await (await first.get("/scores/top")).json()
    users_before = {u: await (await first.get(f"/scores/{u}")).json() for u in users[:4]}
    await first.close()  # a clean stop: the sink commits everything to SQLite
    assert (tmp_path / "data" / "scoreboard.db").is_file()

    second = await aiohttp_client(create_app(settings))
    top_after = await (await second.get("/scores/top")).json()
    assert top_after["entries"] == top_before["entries"]
    assert top_after["version"] > top_before["version"]
    for u in users[:4]:
        assert await (await second.get(f"/scores/{u}")).json() == users_before[u]
    assert (await second.get(f"/scores/{users[4]}")).status == 404, "the erasure persisted"
    headers, body, original = sent[-1]
    replay = await second.post("/scores/increment", json=body, headers=headers)
    assert replay.status == 409
    assert (await replay.json())["original"] == {
        k: original[k] for k in ("eventId", "score", "rank")
    }
    headers, body = tokens.request(users[0], 7)
    r = await second.post("/scores/increment", json=body, headers=headers)
    assert (await r.json())["score"] == users_before[users[0]]["score"] + 7
    ready = await second.get("/readyz")
    assert ready.status == 200 and await ready.json() == {"redis": "ok", "database": "ok"}
