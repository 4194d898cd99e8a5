"""Bounded fuzzing of the token parsers and of the increment body parser.

- Tokens: structured tokens (headers and claims of every JSON type, numbers JSON cannot
  hold, every configured and unconfigured key and algorithm, edits after signing) and
  plain garbage go straight to `jws` and `auth.Verifier`. They may only ever raise the
  contract's errors (`InvalidToken`, `InvalidActionToken`, `jws.TokenError`), and a
  token is accepted only when a configured key of the right kind signed it unchanged.
- Bodies: near-valid and hostile increment requests go over HTTP to `create_app`
  (`_read_json` and `_parse_increment` behind it). Every answer is a contract status
  with the contract's error body (never a 500), and the stream grows by exactly the
  number of 200s.

Derandomized and bounded (EXAMPLES), so CI runs the same inputs in a few seconds; raise
the counts locally for a longer search.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from scoreboard import jws, keys
from scoreboard.auth import Action, Principal, Verifier, parse_uuid
from scoreboard.config import Settings
from scoreboard.errors import InvalidActionToken, InvalidToken
from scoreboard.http.app import create_app

from ..conftest import ACTION_SECRET, JWT_SECRET, Tokens, new_user, settings_with
from ..helpers import error_body_ok
from .support import ALGS, b64

EXAMPLES = {"tokens": 1200, "bodies": 800}
FUZZ = dict(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
USER = "3f2b1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
ISSUER = "https://issuer.example"
AUDIENCE = "scoreboard"
# Numbers a JSON text can spell that no JSON library should hand over as a plain number.
ODD_NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" + b"0" * 400, b"1" + b"0" * 5000, b"18446744073709551616", b"-0", b"1e-400", b"0.0", b"1.5"]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),  # fmt: skip
    max_leaves=8,
)


HEADER_EXTRAS: st.SearchStrategy[dict[str, Any]] = st.just({}) | st.dictionaries(
    st.sampled_from(["crit", "b64", "jku", "x5u", "kid", "typ", "jwk"]), json_values, max_size=2
)
# Mostly None (a structured token); otherwise any text at all.
GARBAGE = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.text(max_size=80),
    st.from_regex(r"[A-Za-z0-9_\-=.+/ ]{0,120}", fullmatch=True),
)


def _dumps(value: Any) -> bytes:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps(value, allow_nan=False).encode()


def valid_claims(kind: str, now: int) -> dict[str, Any]:
    if kind == "user":
        return {"sub": USER, "iat": now, "exp": now + 300, "iss": ISSUER, "aud": AUDIENCE, "scope": "scores:bonus"}  # fmt: skip
    return {"sub": USER, "nonce": "n" * 20, "delta": 5, "action": "score", "iat": now, "exp": now + 120}  # fmt: skip


# Per claim, values a careless or hostile issuer might put there.
ODD_CLAIMS: dict[str, list[Any]] = {
    "sub": [USER.upper(), "alice", "", None, 7, [USER]],
    "exp": [0, -1, 2**63, 2**64, 10**30, 1.5e308, "9999999999", True, None],
    "iat": [2**63, -(2**63), 1e308, "0", False],
    "nbf": [2**63, -1e308, "0", None],
    "iss": ["https://issuer.ex", "", ["https://issuer.example"], None],
    "aud": [[], ["x"], [AUDIENCE, 1], "scoreboar", None],
    "scope": [["scores:admin"], 5, "scores:admin\u0000", ""],
    "nonce": ["n" * 15, "n" * 129, "n/" * 10, 12345678901234567, None],
    "delta": [5.0, True, "5", 2**64, -(2**63), None],
    "action": ["", "x" * 65, 5, None, "bonus"],
}


@st.composite
def claims(draw: st.DrawFn, now: int) -> bytes:
    """Valid claims of a user JWT or an action token with a few of them spoiled."""
    body = valid_claims(draw(st.sampled_from(["user", "action"])), now)
    for name in draw(st.lists(st.sampled_from(sorted(ODD_CLAIMS)), max_size=3, unique=True)):
        how = draw(st.sampled_from(["odd", "odd", "absent", "any"]))
        if how == "absent":
            body.pop(name, None)
        else:
            body[name] = draw(st.sampled_from(ODD_CLAIMS[name]) if how == "odd" else json_values)
    raw = _dumps(body)
    if body and draw(st.integers(0, 2)) == 0:
        name = draw(st.sampled_from(sorted(body)))
        literal = draw(st.sampled_from(ODD_NUMBERS))
        raw = raw.replace(_dumps({name: body[name]})[1:-1], b'"' + name.encode() + b'": ' + literal, 1)  # fmt: skip
    return raw


def sign_raw(header: dict[str, Any], payload: bytes, key: Any) -> str:
    """A compact JWS of a payload given as raw JSON bytes (any header, any key)."""
    if header.get("alg") == "none":
        return f"{b64(json.dumps(header).encode())}.{b64(payload)}."
    signing = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    alg = header["alg"]
    if isinstance(alg, str) and alg.startswith("HS") and alg in ("HS256", "HS384", "HS512"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        raw = key if isinstance(key, bytes) else str(key).encode()
        return f"{signing}.{b64(hmac.new(raw, signing.encode(), digest).digest())}"
    return f"{signing}.{b64(ALGS[alg].sign(signing.encode(), key))}"


def mutate(token: str, how: str, pos: int) -> str:
    if how == "none" or not token:
        return token
    i = pos % len(token)
    if how == "flip":
        return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    if how == "truncate":
        return token[:i]
    if how == "insert":
        return token[:i] + "\u00e9" + token[i:]
    if how == "dot":
        return token + "."
    return token + "="


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ring: dict[str, Any] = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "stranger": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    jwks = []
    for kid, alg, algo, name in (
        ("rsa-1", "RS256", RSAAlgorithm, "rsa"),
        ("ec-1", "ES256", ECAlgorithm, "ec"),
        ("ed-1", "EdDSA", OKPAlgorithm, "ed"),
    ):
        jwk = json.loads(algo.to_jwk(ring[name].public_key()))
        jwk.update(kid=kid, alg=alg)
        jwks.append(jwk)
    path: Path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": jwks}))
    ring["path"] = str(path)
    return ring


# (name, alg, kid, key, a configured user key, the action key)
SIGNERS = [
    ("user secret", "HS256", None, "jwt", True, False),
    ("action secret", "HS256", None, "action", False, True),
    ("wrong secret", "HS256", None, "wrong", False, False),
    ("user secret HS512", "HS512", None, "jwt", False, False),
    ("none", "none", None, None, False, False),
    ("rsa", "RS256", "rsa-1", "rsa", True, False),
    ("ec", "ES256", "ec-1", "ec", True, False),
    ("ed", "EdDSA", "ed-1", "ed", True, False),
    ("rsa under the ec kid", "RS256", "ec-1", "rsa", False, False),
    ("stranger under the rsa kid", "RS256", "rsa-1", "stranger", False, False),
    ("stranger, no kid", "RS256", None, "stranger", False, False),
    ("rsa PEM as HS256 secret", "HS256", "rsa-1", "rsa-pem", False, False),
]


def test_token_parsers_only_raise_contract_errors(keyring: dict[str, Any]) -> None:
    settings = Settings(
        redis_url="redis://unused",
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        jwt_public_keys=keyring["path"],
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    verifier = Verifier(settings)
    secrets_by_name: dict[str | None, Any] = {
        "jwt": JWT_SECRET,
        "action": ACTION_SECRET,
        "wrong": "wrong-" + "w" * 32,
        "rsa-pem": keyring["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        **{k: keyring[k] for k in ("rsa", "ec", "ed", "stranger")},
        None: None,
    }
    now = int(time.time())
    seen = {"inputs": 0, "user accepted": 0, "action accepted": 0}

    # A trusted issuer's token with an expiry no float can hold (a 500 once).
    huge_exp = _dumps(valid_claims("user", now)).replace(
        b'"exp": %d' % (now + 300), b'"exp": 1' + b"0" * 400
    )

    @hypothesis_settings(max_examples=EXAMPLES["tokens"], **FUZZ)  # type: ignore[arg-type]
    @example(SIGNERS[5], {}, huge_exp, "none", 0, None)
    @example(SIGNERS[0], {}, huge_exp, "none", 0, None)
    @given(
        signer=st.sampled_from(SIGNERS),
        extra=HEADER_EXTRAS,
        payload=claims(now),
        how=st.sampled_from(["none", "none", "none", "flip", "truncate", "insert", "dot", "pad"]),
        pos=st.integers(0, 2000),
        garbage=GARBAGE,
    )
    def run(
        signer: tuple[str, str, str | None, Any, bool, bool],
        extra: dict[str, Any],
        payload: bytes,
        how: str,
        pos: int,
        garbage: str | None,
    ) -> None:
        seen["inputs"] += 1
        name, alg, kid, key_name, user_key, action_key = signer
        header: dict[str, Any] = {"alg": alg, **extra}
        if kid is not None:
            header["kid"] = kid
        original = sign_raw(header, payload, secrets_by_name[key_name])
        token = garbage if garbage is not None else mutate(original, how, pos)
        unchanged = token == original
        try:
            principal: Principal | None = verifier.user(token)
        except InvalidToken:
            principal = None
        if principal is not None:
            seen["user accepted"] += 1
            assert unchanged and user_key, (name, header, payload)
            # No extension is understood, so none may be demanded; an unencoded payload
            # (b64 false) would change what was signed.
            assert "crit" not in extra and extra.get("b64", True) is not False, (name, header)
            assert principal.user_id == parse_uuid(json.loads(payload)["sub"])
        try:
            action: Action | None = verifier.action(token)
        except InvalidActionToken:
            action = None
        if action is not None:
            seen["action accepted"] += 1
            assert unchanged and action_key, (name, header, payload)
        for secret in (JWT_SECRET, ACTION_SECRET):
            try:
                _, body = jws.HS256(secret).verify(token)
                jws.check_times(body, time.time(), 10)
                jws.check_issuer_audience(body, ISSUER, AUDIENCE)
            except jws.TokenError:
                pass
        try:
            jws.header(token)
        except jws.TokenError:
            pass

    run()
    print(
        f"\nfuzz: {seen['inputs']} tokens, 0 unexpected exceptions;"
        f" user JWTs accepted {seen['user accepted']}, action tokens accepted {seen['action accepted']}"
    )
    assert seen["user accepted"] and seen["action accepted"], "the fuzz never reached acceptance"


CODES = {
    400: {"bad_request"},
    403: {"invalid_action_token", "forbidden"},
    409: {"replay"},
    413: {"payload_too_large"},
    415: {"unsupported_media_type"},
    422: {"invalid_delta"},
}
# What one perturbation of a valid increment request may change, and to what.
PERTURB: dict[str, st.SearchStrategy[Any]] = {
    "userId": st.sampled_from(["upper", "other", "alice", "newline"]) | json_values,
    "delta": st.sampled_from([0, -1, 1001, 100_000, 100_001, 2**53, 2**63, -(2**64)])
    | json_values,  # fmt: skip
    "token": st.sampled_from(["other delta", "other user", "bonus", "garbage", "reused"])
    | json_values,  # fmt: skip
    "extra": st.dictionaries(
        st.sampled_from(["score", "userid", "delta ", "\u0000"]),
        json_values,
        min_size=1,
        max_size=1,
    ),  # fmt: skip
    "drop": st.sampled_from(["userId", "delta", "actionToken"]),
    "literal": st.sampled_from(ODD_NUMBERS),
    "raw": st.binary(max_size=64)
    | st.sampled_from([b"", b"[]", b"{}", b"null", b"\xef\xbb\xbf{}"]),
    "content_type": st.sampled_from(
        [
            "text/plain",
            None,
            "application/json; charset=latin-1",
            "Application/JSON; charset=utf-8",
            "application/json;charset=UTF8",
        ]
    ),  # fmt: skip
    "nonce": st.sampled_from(["other", "missing", "garbage", "two"]),
    "scope": st.sampled_from(["scores:bonus", "scores:admin", "scores:admin scores:bonus"]),
    "board": st.sampled_from(["/boards/f-{b}", "/boards/F-{b}", "/boards/{b}%00"]),
}


@dataclass
class FuzzedRequest:
    path: str
    headers: list[tuple[str, str]]
    data: bytes
    user: str  # the canonical user id the request is for, when it is one


def build_request(
    tokens: Tokens, victim: str, other: str, board: str, changes: dict[str, Any], used: list[tuple[str, str]]
) -> FuzzedRequest:  # fmt: skip
    """A valid increment of `victim`, then `changes` applied to it."""
    names = {"upper": victim.upper(), "other": other, "alice": "alice", "newline": victim + "\n"}
    user: Any = changes.get("userId", victim)
    if isinstance(user, str):
        user = names.get(user, user)
    delta: Any = changes.get("delta", 1)
    sub = parse_uuid(user) or victim
    mint = delta if isinstance(delta, int) and not isinstance(delta, bool) else 1
    kind = changes.get("token")
    nonce, token = tokens.action(
        other if kind == "other user" else sub,
        max(-(2**62), min(2**62, mint)) + (1 if kind == "other delta" else 0),
        action="bonus" if kind == "bonus" else "score",
    )
    if kind == "reused" and used:
        nonce, token = used[0]
    body: dict[str, Any] = {"userId": user, "delta": delta, "actionToken": token}
    if kind == "garbage":
        body["actionToken"] = "eyJ" + secrets.token_urlsafe(20)
    elif (kind is not None and not isinstance(kind, str)) or kind == "":
        body["actionToken"] = kind
    body.update(changes.get("extra", {}))
    body.pop(changes.get("drop", ""), None)
    data = _dumps(body)
    if "literal" in changes and "delta" in body:
        data = data.replace(_dumps({"delta": body["delta"]})[1:-1], b'"delta": ' + changes["literal"], 1)  # fmt: skip
    data = changes.get("raw", data)
    headers = [("Authorization", f"Bearer {tokens.user(victim, changes.get('scope', ''))}")]
    content_type = changes.get("content_type", "application/json")
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    how: str = changes.get("nonce", "match")
    if how != "missing":
        headers.append(("X-Action-Nonce", {"other": secrets.token_urlsafe(18), "garbage": "nonce with spaces"}.get(how, nonce)))  # fmt: skip
    if how == "two":
        headers.append(("X-Action-Nonce", nonce))
    path = changes.get("board", "").format(b=board) + "/scores/increment"
    if "token" not in changes and "raw" not in changes:
        used.append((nonce, token))
    return FuzzedRequest(path, headers, data, sub)


def test_body_parser_answers_only_contract_statuses(settings: Settings, redis_url: str) -> None:
    loop = asyncio.new_event_loop()
    app_settings = settings_with(settings, rate_limit_per_min=0)
    tokens = Tokens(app_settings)
    victim, other = new_user(), new_user()
    board = secrets.token_hex(4)
    used: list[tuple[str, str]] = []

    async def open_client() -> TestClient[Any, Any]:
        client = TestClient(TestServer(create_app(app_settings)))
        await client.start_server()
        return client

    client = loop.run_until_complete(open_client())
    statuses: dict[int, int] = {}

    async def send(req: FuzzedRequest) -> tuple[int, Any]:
        r = await client.post(req.path, data=req.data, headers=req.headers)
        text = await r.read()
        try:
            return r.status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return r.status, text

    @hypothesis_settings(max_examples=EXAMPLES["bodies"], **FUZZ)  # type: ignore[arg-type]
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        names = data.draw(st.lists(st.sampled_from(sorted(PERTURB)), max_size=3, unique=True))
        changes = {name: data.draw(PERTURB[name], label=name) for name in names}
        req = build_request(tokens, victim, other, board, changes, used)
        status, answer = loop.run_until_complete(send(req))
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            assert answer["userId"] == req.user, answer
            return
        assert status in CODES, (status, answer, changes)
        assert isinstance(answer, dict) and answer.get("error") in CODES[status], answer
        assert error_body_ok(answer, answer["error"]), answer

    async def events_added() -> int:
        r = aioredis.Redis.from_url(redis_url)
        try:
            total = 0
            for b in (keys.GLOBAL_BOARD, f"f-{board}"):
                if await r.exists(keys.BoardKeys(b).events):
                    total += int((await r.xinfo_stream(keys.BoardKeys(b).events))["entries-added"])
            return total
        finally:
            await r.aclose()

    try:
        run()
        added = loop.run_until_complete(events_added())
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    print(f"\nfuzz: {sum(statuses.values())} increment requests, statuses {dict(sorted(statuses.items()))}, 0 server errors")  # fmt: skip
    assert added == statuses.get(200, 0), "the stream grew by other than the accepted requests"
    assert statuses.get(200) and len(statuses) >= 5, "the fuzz stayed on one path"
