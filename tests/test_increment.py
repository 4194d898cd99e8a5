"""POST /scores/increment: every row of the contract's error table, in its order."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from scoreboard import auth
from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .conftest import AiohttpClient, Tokens, new_user, settings_with
from .helpers import error_body_ok, redis_state

Client = TestClient[Any, Any]


async def post(
    client: Client, headers: dict[str, str], body: Any, path: str = "/scores/increment"
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    r = await client.post(path, data=data, headers=headers)
    text = await r.read()
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = text
    return r.status, parsed, r.headers


async def test_success_body(client: Client, tokens: Tokens) -> None:
    user = new_user()
    headers, body = tokens.request(user, 40)
    status, data, resp_headers = await post(client, headers, body)
    assert status == 200, data
    assert data["userId"] == user
    assert data["score"] == 40 and data["rank"] == 1 and data["previousRank"] is None
    assert data["delta"] == 40 and data["topChanged"] is True
    assert data["eventId"] == auth.event_id("global", headers["X-Action-Nonce"])
    assert resp_headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp_headers["X-Request-ID"]
    headers, body = tokens.request(user, 2)
    status, data, _ = await post(client, headers, body)
    assert (data["score"], data["rank"], data["previousRank"]) == (42, 1, 1)


async def test_request_id_echoed_when_sane(client: Client, tokens: Tokens) -> None:
    headers, body = tokens.request(new_user(), 1)
    status, _, h = await post(client, {**headers, "X-Request-ID": "abc-123"}, body)
    assert status == 200 and h["X-Request-ID"] == "abc-123"
    headers, body = tokens.request(new_user(), 1)
    status, _, h = await post(client, {**headers, "X-Request-ID": "x" * 129}, body)
    assert status == 200 and h["X-Request-ID"] != "x" * 129 and len(h["X-Request-ID"]) == 32


# ---- 401 invalid_token ---------------------------------------------------------------


def _auth_cases(
    tokens: Tokens, user: str
) -> list[tuple[str, dict[str, str] | list[tuple[str, str]]]]:
    good = tokens.user(user)
    now = int(time.time())
    return [
        ("missing", {}),
        ("not bearer", {"Authorization": f"Basic {good}"}),
        ("empty bearer", {"Authorization": "Bearer "}),
        ("garbage", {"Authorization": "Bearer not.a.jwt"}),
        (
            "wrong key",
            {"Authorization": "Bearer " + jwt.encode({"sub": user, "exp": now + 60}, "k" * 40)},
        ),
        ("expired", {"Authorization": "Bearer " + tokens.user(user, exp=now - 100)}),
        ("no exp", {"Authorization": "Bearer " + tokens.user(user, exp=None)}),
        ("sub not uuid", {"Authorization": "Bearer " + tokens.user("alice")}),
        (
            "alg none",
            {
                "Authorization": "Bearer "
                + jwt.encode({"sub": user, "exp": now + 60}, "", algorithm="none")
            },
        ),
        ("action token as user jwt", {"Authorization": "Bearer " + tokens.action(user, 1)[1]}),
        ("8 KiB token", {"Authorization": "Bearer " + "a" * 8192}),
        ("two headers", [("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")]),
    ]


async def test_401_cases_change_nothing(client: Client, tokens: Tokens, redis_url: str) -> None:
    user = new_user()
    before = await redis_state(redis_url)
    for name, auth_headers in _auth_cases(tokens, user):
        _, body = tokens.request(user, 5)
        headers: Any
        extra = {"X-Action-Nonce": secrets.token_urlsafe(18), "Content-Type": "application/json"}
        if isinstance(auth_headers, list):
            headers = [*auth_headers, *extra.items()]
        else:
            headers = {**auth_headers, **extra}
        r = await client.post("/scores/increment", data=orjson.dumps(body), headers=headers)
        data = await r.json()
        assert r.status == 401, (name, data)
        assert error_body_ok(data, "invalid_token"), name
        assert r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"', name
        assert data["requestId"] == r.headers["X-Request-ID"]
    assert await redis_state(redis_url) == before


async def test_bearer_scheme_is_case_insensitive(client: Client, tokens: Tokens) -> None:
    user = new_user()
    headers, body = tokens.request(user, 3)
    headers["Authorization"] = headers["Authorization"].replace("Bearer", "bEaReR")
    status, data, _ = await post(client, headers, body)
    assert status == 200, data


async def test_401_comes_before_everything_else(client: Client, tokens: Tokens) -> None:
    status, data, _ = await post(client, {"Content-Type": "text/plain"}, b"x" * 20000)
    assert status == 401 and data["error"] == "invalid_token"


# ---- 413 / 415 / 400 -----------------------------------------------------------------


async def test_413_body_too_large(client: Client, tokens: Tokens, redis_url: str) -> None:
    user = new_user()
    headers, body = tokens.request(user, 5)
    before = await redis_state(redis_url)
    big = orjson.dumps({**body, "pad": "x" * 17000})
    status, data, _ = await post(client, headers, big)
    assert status == 413 and error_body_ok(data, "payload_too_large")
    # Too large is checked before the content type.
    status, data, _ = await post(client, {**headers, "Content-Type": "text/plain"}, big)
    assert status == 413
    # JSON nested 10,000 deep is 20,000 bytes: refused for its size before parsing.
    status, data, _ = await post(client, headers, b"[" * 10000 + b"]" * 10000)
    assert status == 413 and error_body_ok(data, "payload_too_large")
    assert await redis_state(redis_url) == before


async def test_413_chunked_body(client: Client, tokens: Tokens) -> None:
    headers, body = tokens.request(new_user(), 5)

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 1024

    r = await client.post("/scores/increment", data=chunks(), headers=headers)
    assert r.status == 413 and error_body_ok(await r.json(), "payload_too_large")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json-patch+json", None,
     "application/json; charset=latin-1"],
)  # fmt: skip
async def test_415(client: Client, tokens: Tokens, content_type: str | None) -> None:
    headers, body = tokens.request(new_user(), 5)
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    status, data, _ = await post(client, headers, body)
    assert status == 415 and error_body_ok(data, "unsupported_media_type"), data


async def test_json_content_type_with_charset_is_fine(client: Client, tokens: Tokens) -> None:
    headers, body = tokens.request(new_user(), 5)
    headers["Content-Type"] = "Application/JSON; charset=UTF-8"
    status, data, _ = await post(client, headers, body)
    assert status == 200, data


def _bad_bodies(body: dict[str, Any]) -> list[tuple[str, bytes]]:
    def dump(value: Any) -> bytes:
        return json.dumps(value).encode()

    return [
        ("empty", b""),
        ("not json", b"{userId:"),
        ("NaN", dump({**body, "delta": 0}).replace(b"0", b"NaN", 1)),
        (
            "Infinity",
            json.dumps({**body, "delta": 1}).replace('"delta": 1', '"delta": Infinity').encode(),
        ),
        (
            "1e400",
            json.dumps({**body, "delta": 1}).replace('"delta": 1', '"delta": 1e400').encode(),
        ),
        (
            "5000 digits",
            json.dumps({**body, "delta": 1})
            .replace('"delta": 1', '"delta": ' + "9" * 5000)
            .encode(),
        ),
        ("invalid utf-8", dump(body).replace(b'"delta"', b'"d\xffelta"')),
        ("array", dump([body])),
        ("string", dump("hello")),
        ("null", b"null"),
        ("nested 5000 deep", b"[" * 5000 + b"]" * 5000),
        ("nested object", b'{"a":' * 2000 + b"1" + b"}" * 2000),
        ("missing delta", dump({k: v for k, v in body.items() if k != "delta"})),
        ("missing userId", dump({k: v for k, v in body.items() if k != "userId"})),
        ("missing token", dump({k: v for k, v in body.items() if k != "actionToken"})),
        ("unknown field", dump({**body, "extra": 1})),
        ("delta float", dump({**body, "delta": 5.0})),
        ("delta bool", dump({**body, "delta": True})),
        ("delta string", dump({**body, "delta": "5"})),
        ("delta null", dump({**body, "delta": None})),
        ("userId not uuid", dump({**body, "userId": "alice"})),
        ("userId with NUL", dump({**body, "userId": body["userId"][:-1] + "\u0000"})),
        (
            "userId cyrillic",
            # A Cyrillic "а" in place of the first character, whatever the UUID is.
            dump({**body, "userId": "\u0430" + body["userId"][1:]}),
        ),
        ("userId number", dump({**body, "userId": 12})),
        ("userId braces", dump({**body, "userId": "{" + body["userId"] + "}"})),
        ("token not string", dump({**body, "actionToken": 5})),
        ("token empty", dump({**body, "actionToken": ""})),
    ]


async def test_400_bodies_change_nothing(client: Client, tokens: Tokens, redis_url: str) -> None:
    user = new_user()
    headers, body = tokens.request(user, 5)
    body["userId"] = body["userId"].replace("0", "a") if "0" in body["userId"] else body["userId"]
    before = await redis_state(redis_url)
    for name, raw in _bad_bodies(body):
        status, data, _ = await post(client, headers, raw)
        assert status == 400, (name, data)
        assert error_body_ok(data, "bad_request"), name
    assert await redis_state(redis_url) == before


@pytest.mark.parametrize(
    "nonce",
    [None, "short", "x" * 129, "has space in it..", "bad\r\nX-Injected: 1aaaaaa", "émoji-é-é-é-é-é-é", "a/b/c/d/e/f/g/h/i/j"],
)  # fmt: skip
async def test_400_nonce_header(client: Client, tokens: Tokens, nonce: str | None) -> None:
    headers, body = tokens.request(new_user(), 5)
    if nonce is None:
        del headers["X-Action-Nonce"]
        status, data, _ = await post(client, headers, body)
    else:
        raw_headers = [(k, v) for k, v in headers.items() if k != "X-Action-Nonce"]
        try:
            r = await client.post(
                "/scores/increment",
                data=orjson.dumps(body),
                headers=[*raw_headers, ("X-Action-Nonce", nonce)],
            )
        except ValueError:
            # The client refuses to send CR/LF in a header: nothing reached the server.
            assert "\r" in nonce
            return
        status, data = r.status, await r.json()
    assert status == 400 and error_body_ok(data, "bad_request"), data


async def test_400_two_nonce_headers(client: Client, tokens: Tokens) -> None:
    headers, body = tokens.request(new_user(), 5)
    nonce = headers.pop("X-Action-Nonce")
    r = await client.post(
        "/scores/increment",
        data=orjson.dumps(body),
        headers=[*headers.items(), ("X-Action-Nonce", nonce), ("X-Action-Nonce", nonce)],
    )
    assert r.status == 400


# ---- 403 invalid_action_token --------------------------------------------------------


async def test_403_action_token(
    client: Client, tokens: Tokens, redis_url: str, settings: Settings
) -> None:
    user, other = new_user(), new_user()
    bearer = tokens.user(user)
    now = int(time.time())
    cases: list[tuple[str, str, str, int]] = []  # (name, nonce header, action token, body delta)

    def add(name: str, delta: int = 5, nonce: str | None = None, header_nonce: str | None = None,
            sub: str | None = None, **kw: Any) -> None:  # fmt: skip
        n, tok = tokens.action(sub or user, delta, nonce=nonce, **kw)
        cases.append((name, header_nonce or n, tok, 5))

    add("bad signature", key="z" * 40)
    add("signed with the user secret", key=settings.jwt_secret)
    add("expired", iat=now - 200, exp=now - 100)
    add("ttl too long", ttl=settings.action_token_max_ttl_s + 1)
    add("no iat", iat=None)
    add("no exp", exp=None)
    add("no nonce claim", nonce=None, header_nonce="n" * 20)
    add("sub mismatch", sub=other)
    add("nonce mismatch", header_nonce="z" * 20)
    add("delta mismatch", delta=6)
    add("delta claim bool", delta=True)
    add("nbf in the future", nbf=now + 120)
    cases.append(("not a jwt", "q" * 20, "abc.def.ghi", 5))
    cases.append(("user jwt as action token", "q" * 20, bearer, 5))
    # A nonce claim removed: build by hand so header and claim differ in presence.
    tok = jwt.encode({"sub": user, "delta": 5, "iat": now, "exp": now + 60}, settings.action_secret)
    cases.append(("nonce claim missing", "m" * 20, tok, 5))
    before = await redis_state(redis_url)
    for name, nonce, token, delta in cases:
        headers = {
            "Authorization": f"Bearer {bearer}",
            "X-Action-Nonce": nonce,
            "Content-Type": "application/json",
        }
        status, data, _ = await post(
            client, headers, {"userId": user, "delta": delta, "actionToken": token}
        )
        assert status == 403, (name, data)
        assert error_body_ok(data, "invalid_action_token"), (name, data)
    assert await redis_state(redis_url) == before


async def test_captured_token_under_fresh_nonce(client: Client, tokens: Tokens) -> None:
    user = new_user()
    headers, body = tokens.request(user, 5)
    assert (await post(client, headers, body))[0] == 200
    headers["X-Action-Nonce"] = secrets.token_urlsafe(18)
    status, data, _ = await post(client, headers, body)
    assert status == 403 and data["error"] == "invalid_action_token"


# ---- 403 forbidden -------------------------------------------------------------------


async def test_403_forbidden(client: Client, tokens: Tokens, redis_url: str) -> None:
    user, other = new_user(), new_user()
    before = await redis_state(redis_url)
    cases = [
        ("for another user", tokens.request(other, 5, caller=user)),
        ("bonus without scope", tokens.request(user, 5, action="bonus")),
        ("negative without admin", tokens.request(user, -5)),
        ("negative with bonus scope only", tokens.request(user, -5, scope="scores:bonus")),
    ]
    for name, (headers, body) in cases:
        status, data, _ = await post(client, headers, body)
        assert status == 403 and error_body_ok(data, "forbidden"), (name, data)
    assert await redis_state(redis_url) == before


async def test_scopes_allow(client: Client, tokens: Tokens) -> None:
    user, admin = new_user(), new_user()
    status, data, _ = await post(
        client, *tokens.request(user, 5000, action="bonus", scope="scores:bonus")
    )
    assert status == 200 and data["score"] == 5000, data
    status, data, _ = await post(
        client, *tokens.request(user, -100, caller=admin, scope="scores:admin")
    )
    assert status == 200 and data["score"] == 4900, data


# ---- 422 invalid_delta ---------------------------------------------------------------


async def test_422(client: Client, tokens: Tokens, redis_url: str, settings: Settings) -> None:
    user = new_user()
    before = await redis_state(redis_url)
    cases = [
        ("zero", tokens.request(user, 0)),
        ("above max", tokens.request(user, settings.max_delta + 1)),
        ("bonus above bonus max", tokens.request(user, settings.max_bonus_delta + 1, action="bonus", scope="scores:bonus")),
        ("penalty too large", tokens.request(user, -settings.max_delta - 1, scope="scores:admin")),
        ("huge", tokens.request(user, 2**62)),
    ]  # fmt: skip
    for name, (headers, body) in cases:
        status, data, _ = await post(client, headers, body)
        assert status == 422 and error_body_ok(data, "invalid_delta"), (name, data)
    assert await redis_state(redis_url) == before
    status, _, _ = await post(client, *tokens.request(user, settings.max_delta))
    assert status == 200


async def test_422_score_bound(
    aiohttp_client: AiohttpClient, settings: Settings, redis_url: str
) -> None:
    big = settings_with(settings, max_bonus_delta=2**53, rate_limit_per_min=0)
    client = await aiohttp_client(create_app(big))
    tokens = Tokens(big)
    user = new_user()
    status, data, _ = await post(
        client, *tokens.request(user, 2**53 - 2, action="bonus", scope="scores:bonus")
    )
    assert status == 200 and data["score"] == 2**53 - 2
    status, data, _ = await post(
        client, *tokens.request(user, 1, action="bonus", scope="scores:bonus")
    )
    assert status == 200 and data["score"] == 2**53 - 1
    before = await redis_state(redis_url)
    status, data, _ = await post(client, *tokens.request(user, 1))
    assert status == 422 and data["error"] == "invalid_delta"
    assert await redis_state(redis_url) == before
    r = await client.get(f"/scores/{user}")
    assert (await r.json())["score"] == 2**53 - 1


# ---- 409 replay ----------------------------------------------------------------------


async def test_409_replay_with_original(client: Client, tokens: Tokens, redis_url: str) -> None:
    user = new_user()
    headers, body = tokens.request(user, 9)
    status, first, _ = await post(client, headers, body)
    assert status == 200
    before = await redis_state(redis_url)
    status, data, _ = await post(client, headers, body)
    assert status == 409 and error_body_ok(data, "replay")
    assert data["original"] == {"eventId": first["eventId"], "score": 9, "rank": first["rank"]}
    assert await redis_state(redis_url) == before
    r = await client.get(f"/scores/{user}")
    assert (await r.json())["score"] == 9


async def test_nonce_ttl_outlives_token(
    client: Client, tokens: Tokens, redis_url: str, settings: Settings
) -> None:
    user = new_user()
    headers, body = tokens.request(user, 1)
    assert (await post(client, headers, body))[0] == 200
    token_exp = jwt.decode(body["actionToken"], options={"verify_signature": False})["exp"]
    r = aioredis.Redis.from_url(redis_url)
    try:
        ttl_ms = await r.pttl(f"sb:{{global}}:nonce:{headers['X-Action-Nonce']}")
    finally:
        await r.aclose()
    assert ttl_ms / 1000 + time.time() >= token_exp + settings.jwt_leeway_s


# ---- 429 rate_limited ----------------------------------------------------------------


async def test_429_rate_limit(
    aiohttp_client: AiohttpClient, settings: Settings, redis_url: str
) -> None:
    limited = settings_with(settings, rate_limit_per_min=3)
    client = await aiohttp_client(create_app(limited))
    tokens = Tokens(limited)
    user = new_user()
    for _ in range(3):
        assert (await post(client, *tokens.request(user, 1)))[0] == 200
    headers, body = tokens.request(user, 1)
    before = await redis_state(redis_url)
    status, data, h = await post(client, headers, body)
    assert status == 429 and error_body_ok(data, "rate_limited")
    assert 1 <= int(h["Retry-After"]) <= 61
    assert await redis_state(redis_url) == before
    # Another user is not limited.
    assert (await post(client, *tokens.request(new_user(), 1)))[0] == 200


async def test_429_leaves_nonce_usable(
    aiohttp_client: AiohttpClient, settings: Settings, redis_url: str
) -> None:
    limited = settings_with(settings, rate_limit_per_min=1)
    client = await aiohttp_client(create_app(limited))
    tokens = Tokens(limited)
    user = new_user()
    assert (await post(client, *tokens.request(user, 1)))[0] == 200
    headers, body = tokens.request(user, 1)
    assert (await post(client, headers, body))[0] == 429
    # The refused nonce was not consumed: once the window is reset it is accepted.
    r = aioredis.Redis.from_url(redis_url)
    try:
        async for key in r.scan_iter(match="sb:{global}:rate:*"):
            await r.delete(key)
    finally:
        await r.aclose()
    status, data, _ = await post(client, headers, body)
    assert status == 200 and data["score"] == 2


# ---- 500 store_unavailable -----------------------------------------------------------


async def test_500_store_unavailable(aiohttp_client: AiohttpClient, settings: Settings) -> None:
    from .servers import free_port

    down = settings_with(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(create_app(down))
    status, data, _ = await post(client, *Tokens(down).request(new_user(), 1))
    assert status == 500 and error_body_ok(data, "store_unavailable")
    # Reads fail the same way, never with a bare 500.
    r = await client.get("/scores/top")
    assert r.status == 500 and error_body_ok(await r.json(), "store_unavailable")


# ---- routing -------------------------------------------------------------------------


async def test_unknown_route_and_method(client: Client) -> None:
    r = await client.get("/nope")
    assert r.status == 404 and error_body_ok(await r.json(), "not_found")
    r = await client.get("/scores/increment")
    assert r.status in (400, 404, 405)
    r = await client.put("/scores/top")
    assert r.status == 405 and error_body_ok(await r.json(), "method_not_allowed")
