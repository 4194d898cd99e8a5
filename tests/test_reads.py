"""GET /scores/top, /scores/{userId}, /scores/{userId}/around, boards, ETag/304, the cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .attempts import scrape, value
from .conftest import AiohttpClient, Tokens, new_user, settings_with
from .helpers import error_body_ok

Client = TestClient[Any, Any]


async def give(client: Client, tokens: Tokens, user: str, delta: int, board: str = "") -> Any:
    headers, body = tokens.request(user, delta, action="bonus", scope="scores:bonus")
    prefix = f"/boards/{board}" if board else ""
    r = await client.post(f"{prefix}/scores/increment", json=body, headers=headers)
    assert r.status == 200, await r.text()
    return await r.json()


def expected_board(scores: dict[str, int]) -> list[dict[str, Any]]:
    """The board computed independently: points desc, user id asc, competition ranks."""
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    out = []
    for user, score in ordered:
        rank = 1 + sum(1 for s in scores.values() if s > score)
        out.append({"rank": rank, "userId": user, "score": score})
    return out


@pytest.fixture
async def board_client(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    return await aiohttp_client(create_app(settings_with(settings, rate_limit_per_min=0)))


async def test_empty_board(client: Client) -> None:
    r = await client.get("/scores/top")
    data = await r.json()
    assert r.status == 200
    assert data["entries"] == [] and data["version"] == 0
    assert data["updatedAt"].endswith("Z")
    assert r.headers["ETag"] == '"0"'


async def test_ranking_with_ties(board_client: Client, settings: Settings) -> None:
    tokens = Tokens(settings)
    scores: dict[str, int] = {}
    values = [50, 30, 50, 10, 30, 30, 70, 5, 50, 1]
    for v in values:
        user = new_user()
        scores[user] = v
        await give(board_client, tokens, user, v)
    r = await board_client.get("/scores/top?limit=100")
    data = await r.json()
    assert data["entries"] == expected_board(scores)
    ranks = [e["rank"] for e in data["entries"]]
    assert ranks == [1, 2, 2, 2, 5, 5, 5, 8, 9, 10]
    for entry in data["entries"]:
        r = await board_client.get(f"/scores/{entry['userId']}")
        assert await r.json() == {
            "userId": entry["userId"],
            "score": entry["score"],
            "rank": entry["rank"],
        }


async def test_paging_through_the_whole_board(board_client: Client, settings: Settings) -> None:
    tokens = Tokens(settings)
    scores: dict[str, int] = {}
    for i in range(130):
        user = new_user()
        scores[user] = 1 + (i * 7) % 40  # plenty of ties
        await give(board_client, tokens, user, scores[user])
    expected = expected_board(scores)
    got: list[dict[str, Any]] = []
    for offset in range(0, 140, 25):
        r = await board_client.get(f"/scores/top?limit=25&offset={offset}")
        assert r.status == 200
        got.extend((await r.json())["entries"])
    assert got == expected
    # A page straddling the top-100 boundary (served from Redis, not the cache).
    r = await board_client.get("/scores/top?limit=20&offset=90")
    assert (await r.json())["entries"] == expected[90:110]
    # Far beyond the end: empty.
    r = await board_client.get("/scores/top?limit=10&offset=10000")
    assert (await r.json())["entries"] == []


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=-1", "limit=abc", "offset=10001", "offset=-5", "limit=1.5",
     "limit=%00", "limit=1&limit=2", "limit=" + "9" * 50, "offset=٣"],
)  # fmt: skip
async def test_top_bad_params(client: Client, query: str) -> None:
    r = await client.get(f"/scores/top?{query}")
    assert r.status == 400 and error_body_ok(await r.json(), "bad_request")


async def test_etag_and_304(board_client: Client, settings: Settings) -> None:
    tokens = Tokens(settings)
    user = new_user()
    await give(board_client, tokens, user, 10)
    r = await board_client.get("/scores/top")
    etag = r.headers["ETag"]
    assert b"ETag" in [name for name, _ in r.raw_headers]  # spelled as the contract does
    version = (await r.json())["version"]
    assert etag == f'"{version}"'
    r = await board_client.get("/scores/top", headers={"If-None-Match": etag})
    assert r.status == 304 and await r.read() == b""
    assert r.headers["ETag"] == etag
    r = await board_client.get("/scores/top", headers={"If-None-Match": f'"x", W/{etag}'})
    assert r.status == 304
    await give(board_client, tokens, user, 1)
    r = await board_client.get("/scores/top", headers={"If-None-Match": etag})
    assert r.status == 200
    assert (await r.json())["version"] > version


async def test_version_moves_only_with_the_top_100(
    board_client: Client, settings: Settings
) -> None:
    tokens = Tokens(settings)
    users = [new_user() for _ in range(101)]
    for i, user in enumerate(users):
        await give(board_client, tokens, user, 1000 - i)
    r = await board_client.get("/scores/top")
    v1 = (await r.json())["version"]
    # users[100] is 101st: a change that keeps it out of the top-100 leaves the version.
    headers, body = tokens.request(users[100], -1, caller=users[0], scope="scores:admin")
    r = await board_client.post("/scores/increment", json=body, headers=headers)
    data = await r.json()
    assert r.status == 200 and data["rank"] == 101 and data["topChanged"] is False
    r = await board_client.get("/scores/top")
    assert (await r.json())["version"] == v1
    # Into the top-100: the version grows; into the top-10: topChanged.
    data = await give(board_client, tokens, users[100], 1000)
    assert data["rank"] == 1 and data["topChanged"] is True
    r = await board_client.get("/scores/top")
    assert (await r.json())["version"] > v1


async def test_user_and_around(board_client: Client, settings: Settings) -> None:
    tokens = Tokens(settings)
    scores: dict[str, int] = {}
    for i in range(15):
        user = new_user()
        scores[user] = 100 + (i % 5) * 10
        await give(board_client, tokens, user, scores[user])
    expected = expected_board(scores)
    for idx in (0, 7, 14):
        user = expected[idx]["userId"]
        r = await board_client.get(f"/scores/{user}/around?n=3")
        data = await r.json()
        assert data["entries"] == expected[max(0, idx - 3) : idx + 4]
    r = await board_client.get(f"/scores/{expected[5]['userId']}/around")
    assert (await r.json())["entries"] == expected[0:11]
    r = await board_client.get(f"/scores/{expected[5]['userId']}/around?n=0")
    assert (await r.json())["entries"] == [expected[5]]


async def test_user_errors(client: Client) -> None:
    r = await client.get(f"/scores/{new_user()}")
    assert r.status == 404 and error_body_ok(await r.json(), "not_found")
    r = await client.get(f"/scores/{new_user()}/around")
    assert r.status == 404
    for bad in ("alice", "12345", "%00", new_user() + "x"):
        r = await client.get(f"/scores/{bad}")
        assert r.status == 400 and error_body_ok(await r.json(), "bad_request"), bad
    r = await client.get(f"/scores/{new_user()}/around?n=51")
    assert r.status == 400


async def test_boards_are_separate(board_client: Client, settings: Settings) -> None:
    tokens = Tokens(settings)
    user = new_user()
    await give(board_client, tokens, user, 10, board="season-1")
    await give(board_client, tokens, user, 3)
    r = await board_client.get("/boards/season-1/scores/top")
    assert (await r.json())["entries"] == [{"rank": 1, "userId": user, "score": 10}]
    r = await board_client.get(f"/boards/season-1/scores/{user}")
    assert (await r.json())["score"] == 10
    r = await board_client.get(f"/scores/{user}")
    assert (await r.json())["score"] == 3
    r = await board_client.get(f"/boards/global/scores/{user}")
    assert (await r.json())["score"] == 3
    r = await board_client.get("/boards/empty-board/scores/top")
    assert (await r.json())["entries"] == []
    for bad in ("UPPER", "a" * 65, "dot.ted", "sp%20ace"):
        r = await board_client.get(f"/boards/{bad}/scores/top")
        assert r.status == 400 and error_body_ok(await r.json(), "bad_request"), bad


async def cache_hits(client: Client) -> float:
    samples = await scrape(client)
    return value(samples, "scoreboard_cache_requests_total", result="hit")


async def test_top_cache_hits(board_client: Client, settings: Settings) -> None:
    # A board of its own: other runs on this Redis publish on the global board's channel.
    board = f"t-{new_user()[:8]}"
    tokens = Tokens(settings)
    await give(board_client, tokens, new_user(), 10, board=board)
    r = await board_client.get(f"/boards/{board}/scores/top")
    hits = await cache_hits(board_client)
    ids = set()
    for n in range(5):
        # Cached pages share their prepared headers: each response must still get its own.
        etag = {"If-None-Match": r.headers["ETag"]} if n % 2 else {}
        r = await board_client.get(f"/boards/{board}/scores/top", headers=etag)
        assert r.status == (304 if n % 2 else 200)
        assert len(r.headers.getall("X-Request-ID")) == 1
        ids.add(r.headers["X-Request-ID"])
        assert r.headers["Cache-Control"] == "no-cache"
        assert ("Content-Type" in r.headers) == (r.status == 200)
    assert len(ids) == 5
    assert await cache_hits(board_client) == hits + 5
    # A change made in this process is seen at once (the reply carries the version).
    user = new_user()
    await give(board_client, tokens, user, 1000, board=board)
    r = await board_client.get(f"/boards/{board}/scores/top")
    assert (await r.json())["entries"][0]["userId"] == user


async def test_cache_follows_changes_from_elsewhere(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    # Two apps on one Redis: a change through one reaches the other's cache by Pub/Sub.
    board = f"t-{new_user()[:8]}"
    a = await aiohttp_client(create_app(settings))
    b = await aiohttp_client(create_app(settings))
    tokens = Tokens(settings)
    await give(a, tokens, new_user(), 5, board=board)
    await b.get(f"/boards/{board}/scores/top")
    user = new_user()
    await give(a, tokens, user, 50, board=board)
    for _ in range(50):
        r = await b.get(f"/boards/{board}/scores/top")
        if (await r.json())["entries"][0]["userId"] == user:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the other process never saw the change")
