"""Token attacks on the user JWT and the action token, over HTTP against `create_app`.

The server is configured the hard way: an HS256 secret *and* a JWKS file (RS256,
ES256 and EdDSA keys), an issuer and an audience. Every attack is a request that
would succeed but for the one thing the attacker changed; each must get its status
and the contract's error body, and leave Redis exactly as it was. A recording
listener on a local port stands in for every URL a header points to: no request may
reach it.

Decisions written down here (and in docs/threat-model.md):
- `aud` as a list is accepted when it contains the configured audience (RFC 7519
  section 4.1.3: the recipient must find itself among the values), refused otherwise
  (empty list, non-string members, a prefix of ours).
- Expiry with leeway L: a token is valid while now < exp + L. At exactly exp + L it
  has expired (RFC 7519 section 4.1.4, "before"), as pyjwt decides for the public-key
  path; `nbf`/`iat` are refused once they are more than L seconds in the future.

Time is frozen for the two verification paths (`scoreboard.auth.time` and pyjwt's
clock), so the boundaries above are exact and the test is deterministic.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from scoreboard import auth
from scoreboard.config import Settings
from scoreboard.http.app import create_app

from ..conftest import ACTION_SECRET, JWT_SECRET, AiohttpClient, new_user, settings_with
from ..helpers import error_body_ok, redis_state
from .support import b64, sign, unb64

Client = TestClient[Any, Any]
ISSUER = "https://issuer.example"
AUDIENCE = "scoreboard"
LEEWAY = 10


def edit_claims(token: str, **changes: Any) -> str:
    """The token with its payload changed after signing (the signature kept)."""
    h, p, s = token.split(".")
    claims = json.loads(unb64(p))
    claims.update(changes)
    return f"{h}.{b64(json.dumps(claims).encode())}.{s}"


def edit_header(token: str, **changes: Any) -> str:
    h, p, s = token.split(".")
    header = json.loads(unb64(h))
    header.update(changes)
    return f"{b64(json.dumps(header).encode())}.{p}.{s}"


class FrozenClock:
    """Stands in for the `time` module inside `scoreboard.auth`."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@dataclass
class Recorder:
    """A listener that records every connection made to it (none may be)."""

    port: int = 0
    connections: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec.connections.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    yield rec
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "attacker": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FrozenClock]:
    """One frozen instant for both verification paths: ours and pyjwt's (public keys)."""
    frozen = FrozenClock(float(int(time.time())))

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> FrozenDatetime:
            return cls.fromtimestamp(frozen.now, tz)

    monkeypatch.setattr(auth, "time", frozen)
    monkeypatch.setattr(jwt.api_jwt, "datetime", FrozenDatetime)
    yield frozen


@pytest.fixture
def hard_settings(settings: Settings, tmp_path: Path, keys: dict[str, Any]) -> Settings:
    jwks = []
    for kid, alg, algo, name in (
        ("rsa-1", "RS256", RSAAlgorithm, "rsa"),
        ("ec-1", "ES256", ECAlgorithm, "ec"),
        ("ed-1", "EdDSA", OKPAlgorithm, "ed"),
    ):
        jwk = json.loads(algo.to_jwk(keys[name].public_key()))
        jwk.update(kid=kid, alg=alg, use="sig")
        jwks.append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": jwks}))
    return settings_with(
        settings,
        jwt_public_keys=str(path),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_leeway_s=LEEWAY,
        rate_limit_per_min=0,
    )


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, hard_settings: Settings, clock: FrozenClock
) -> Client:
    return await aiohttp_client(create_app(hard_settings))


@dataclass
class Attack:
    """Mints the parts of an increment; each attack replaces one of them."""

    clock: FrozenClock
    victim: str = field(default_factory=new_user)

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(self.clock.now)
        body: dict[str, Any] = {
            "sub": self.victim,
            "iat": now,
            "exp": now + 600,
            "iss": ISSUER,
            "aud": AUDIENCE,
        }
        body.update(changes)
        return {k: v for k, v in body.items() if v is not None}

    def user(self, key: Any = JWT_SECRET, alg: str = "HS256", **changes: Any) -> str:
        header = {"alg": alg, "typ": "JWT", **changes.pop("header", {})}
        return sign(header, self.claims(**changes), key)

    def action(
        self,
        nonce: str,
        delta: int = 5,
        key: Any = ACTION_SECRET,
        alg: str = "HS256",
        header: dict[str, Any] | None = None,
        **changes: Any,
    ) -> str:
        now = int(self.clock.now)
        body: dict[str, Any] = {
            "sub": self.victim,
            "nonce": nonce,
            "delta": delta,
            "action": "score",
            "iat": now,
            "exp": now + 120,
        }
        body.update(changes)
        body = {k: v for k, v in body.items() if v is not None}
        return sign({"alg": alg, "typ": "JWT", **(header or {})}, body, key)


_NONCES = iter(range(10**9))


def fresh_nonce() -> str:
    return f"adversarial-nonce-{next(_NONCES):08d}-{time.monotonic_ns() % 10**6:06d}"


async def send(
    client: Client,
    bearer: str,
    action_token: str,
    nonce: str,
    *,
    user: str,
    delta: int = 5,
) -> tuple[int, Any, Any]:
    r = await client.post(
        "/scores/increment",
        data=orjson.dumps({"userId": user, "delta": delta, "actionToken": action_token}),
        headers={
            "Authorization": f"Bearer {bearer}",
            "X-Action-Nonce": nonce,
            "Content-Type": "application/json",
        },
    )
    return r.status, await r.json(), r.headers


def pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def der(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def user_jwt_attacks(a: Attack, keys: dict[str, Any], rec: Recorder) -> dict[str, str]:
    """Forged or broken user JWTs, by name; each must get 401 invalid_token."""
    rsa_pem, ec_pem = pem(keys["rsa"]), pem(keys["ec"])
    rsa_jwk = RSAAlgorithm.to_jwk(keys["rsa"].public_key()).encode()
    attacker_jwk = json.loads(RSAAlgorithm.to_jwk(keys["attacker"].public_key()))
    attacker = keys["attacker"]
    now = int(a.clock.now)
    good = a.user()
    other = a.user(sub=new_user())
    return {
        "alg none": a.user(alg="none"),
        "alg none with the RSA kid": a.user(alg="none", header={"kid": "rsa-1"}),
        "alg None": a.user(alg="None"),
        "alg NONE": a.user(alg="NONE"),
        "alg none, good HS256 signature kept": edit_header(good, alg="none"),
        "HS256 with the RSA public PEM, RSA kid": a.user(rsa_pem, header={"kid": "rsa-1"}),
        "HS256 with the RSA public PEM, no kid": a.user(rsa_pem),
        "HS256 with the RSA PEM minus its newline": a.user(
            rsa_pem.rstrip(b"\n"), header={"kid": "rsa-1"}
        ),  # fmt: skip
        "HS256 with the RSA public DER, RSA kid": a.user(der(keys["rsa"]), header={"kid": "rsa-1"}),
        "HS256 with the RSA JWK text, RSA kid": a.user(rsa_jwk, header={"kid": "rsa-1"}),
        "HS256 with the EC public PEM, EC kid": a.user(ec_pem, header={"kid": "ec-1"}),
        "HS256 with the EC public PEM, no kid": a.user(ec_pem),
        "HS256 with our secret but the RSA kid": a.user(header={"kid": "rsa-1"}),
        "HS384 with our secret": a.user(alg="HS384"),
        "HS512 with our secret": a.user(alg="HS512"),
        "hs256 (case) with our secret": edit_header(good, alg="hs256"),
        "RS256 by the EC kid": a.user(keys["rsa"], "RS256", header={"kid": "ec-1"}),
        "ES256 by the RSA kid": a.user(keys["ec"], "ES256", header={"kid": "rsa-1"}),
        "PS256 with the RSA key and kid": a.user(keys["rsa"], "PS256", header={"kid": "rsa-1"}),
        "RS256 attacker key, unknown kid": a.user(attacker, "RS256", header={"kid": "attacker-1"}),
        "RS256 attacker key, path kid": a.user(
            attacker, "RS256", header={"kid": "../../../../../../dev/null"}
        ),  # fmt: skip
        "RS256 attacker key, absolute path kid": a.user(
            attacker, "RS256", header={"kid": "/etc/passwd"}
        ),  # fmt: skip
        "RS256 attacker key, SQL kid": a.user(attacker, "RS256", header={"kid": "' OR '1'='1"}),
        "RS256 attacker key, SQL kid naming ours": a.user(
            attacker, "RS256", header={"kid": "rsa-1' --"}
        ),  # fmt: skip
        "RS256 attacker key, kid with NUL": a.user(
            attacker, "RS256", header={"kid": "rsa-1\u0000"}
        ),  # fmt: skip
        "RS256 attacker key, numeric kid": a.user(attacker, "RS256", header={"kid": 1}),
        "RS256 attacker key, list kid": a.user(attacker, "RS256", header={"kid": ["rsa-1"]}),
        "RS256 attacker key, our kid": a.user(attacker, "RS256", header={"kid": "rsa-1"}),
        "RS256 attacker key, jku to a local port": a.user(
            attacker, "RS256", header={"kid": "rsa-1", "jku": rec.url("jwks.json")}
        ),  # fmt: skip
        "RS256 attacker key, jku, unknown kid": a.user(
            attacker, "RS256", header={"kid": "attacker-1", "jku": rec.url("jwks.json")}
        ),  # fmt: skip
        "RS256 attacker key, x5u to a local port": a.user(
            attacker, "RS256", header={"kid": "rsa-1", "x5u": rec.url("cert.pem")}
        ),  # fmt: skip
        "RS256 attacker key, x5u, no kid": a.user(
            attacker, "RS256", header={"x5u": rec.url("cert.pem")}
        ),  # fmt: skip
        "RS256 attacker key embedded as jwk": a.user(
            attacker, "RS256", header={"jwk": attacker_jwk}
        ),  # fmt: skip
        "RS256 attacker key embedded as jwk, our kid": a.user(
            attacker, "RS256", header={"kid": "rsa-1", "jwk": attacker_jwk}
        ),  # fmt: skip
        "HS256 unknown crit": a.user(header={"crit": ["x-policy"], "x-policy": 1}),
        "HS256 empty crit": a.user(header={"crit": []}),
        "RS256 our key, unknown crit": a.user(
            keys["rsa"], "RS256", header={"kid": "rsa-1", "crit": ["x-policy"], "x-policy": 1}
        ),  # fmt: skip
        "HS256 b64 false": a.user(header={"b64": False, "crit": ["b64"]}),
        "iss a prefix of ours": a.user(iss=ISSUER[:-1]),
        "iss ours plus a suffix": a.user(iss=ISSUER + ".evil"),
        "iss ours with a trailing slash": a.user(iss=ISSUER + "/"),
        "iss in capitals": a.user(iss=ISSUER.upper()),
        "iss a list holding ours": a.user(iss=[ISSUER]),
        "iss missing": a.user(iss=None),
        "RS256 our key, iss a prefix": a.user(
            keys["rsa"], "RS256", header={"kid": "rsa-1"}, iss=ISSUER[:-1]
        ),  # fmt: skip
        "aud a list without ours": a.user(aud=["other", "scoreboard-admin"]),
        "aud an empty list": a.user(aud=[]),
        "aud a list with a non-string": a.user(aud=[AUDIENCE, 7]),
        "aud a prefix of ours": a.user(aud=AUDIENCE[:-1]),
        "aud missing": a.user(aud=None),
        "RS256 our key, aud list without ours": a.user(
            keys["rsa"], "RS256", header={"kid": "rsa-1"}, aud=["other"]
        ),  # fmt: skip
        "exp exactly at the leeway": a.user(exp=now - LEEWAY),
        "exp just past the leeway": a.user(exp=now - LEEWAY - 1),
        "exp 1 ms past the leeway": a.user(exp=now - LEEWAY - 0.001),
        "RS256 our key, exp exactly at the leeway": a.user(
            keys["rsa"], "RS256", header={"kid": "rsa-1"}, exp=now - LEEWAY
        ),  # fmt: skip
        "exp missing": a.user(exp=None),
        "exp a string": a.user(exp=str(now + 600)),
        "exp true": a.user(exp=True),
        "nbf past the leeway in the future": a.user(nbf=now + LEEWAY + 1),
        "iat past the leeway in the future": a.user(iat=now + LEEWAY + 1),
        "EdDSA our key, nbf in the future": a.user(
            keys["ed"], "EdDSA", header={"kid": "ed-1"}, nbf=now + LEEWAY + 1
        ),  # fmt: skip
        "sub edited after signing": edit_claims(other, sub=a.victim),
        "scope edited after signing": edit_claims(good, scope="scores:admin scores:bonus"),
        "exp extended after signing": edit_claims(a.user(exp=now - 3600), exp=now + 3600),
        "RS256 our key, sub edited after signing": edit_claims(
            a.user(keys["rsa"], "RS256", header={"kid": "rsa-1"}, sub=new_user()), sub=a.victim
        ),  # fmt: skip
        "ES256 our key, signature cut by a byte": (lambda t: t[:-2])(
            a.user(keys["ec"], "ES256", header={"kid": "ec-1"})
        ),  # fmt: skip
        "signature stripped": good.rsplit(".", 1)[0] + ".",
        "two segments": good.rsplit(".", 1)[0],
        "another token's signature": good.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1],
        "signed with the action secret": a.user(ACTION_SECRET),
        "an action token as the bearer": a.action(fresh_nonce()),
    }


async def test_user_jwt_attacks(
    client: Client,
    clock: FrozenClock,
    keys: dict[str, Any],
    recorder: Recorder,
    redis_url: str,
) -> None:
    a = Attack(clock)
    now = int(clock.now)
    # The configuration works: every configured key, and the boundaries just inside.
    accepted = {
        "HS256": a.user(),
        "RS256": a.user(keys["rsa"], "RS256", header={"kid": "rsa-1"}),
        "ES256": a.user(keys["ec"], "ES256", header={"kid": "ec-1"}),
        "EdDSA": a.user(keys["ed"], "EdDSA", header={"kid": "ed-1"}),
        "aud a list holding ours": a.user(aud=["other", AUDIENCE]),
        "RS256 aud a list holding ours": a.user(
            keys["rsa"], "RS256", header={"kid": "rsa-1"}, aud=[AUDIENCE, "x"]
        ),  # fmt: skip
        "exp one second inside the leeway": a.user(exp=now - LEEWAY + 1),
        "RS256 exp one second inside the leeway": a.user(
            keys["rsa"], "RS256", header={"kid": "rsa-1"}, exp=now - LEEWAY + 1
        ),  # fmt: skip
        "EdDSA nbf exactly at the leeway": a.user(
            keys["ed"], "EdDSA", header={"kid": "ed-1"}, nbf=now + LEEWAY
        ),  # fmt: skip
        "nbf exactly at the leeway": a.user(nbf=now + LEEWAY),
        "iat exactly at the leeway": a.user(iat=now + LEEWAY),
        "jku/x5u ignored on an HS256 token": a.user(
            header={"jku": recorder.url("k"), "x5u": recorder.url("c")}
        ),  # fmt: skip
    }
    for name, bearer in accepted.items():
        nonce = fresh_nonce()
        status, data, _ = await send(client, bearer, a.action(nonce), nonce, user=a.victim)
        assert status == 200, (name, data)

    attacks = user_jwt_attacks(a, keys, recorder)
    before = await redis_state(redis_url)
    wrong = []
    for name, bearer in attacks.items():
        nonce = fresh_nonce()
        status, data, headers = await send(client, bearer, a.action(nonce), nonce, user=a.victim)
        if not (
            status == 401
            and error_body_ok(data, "invalid_token")
            and headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"'
        ):
            wrong.append(f"{name}: {status} {data}")
    changed = await redis_state(redis_url) != before
    print(
        f"\nuser JWT attacks tried / accepted / state changes / outbound connections:"
        f" {len(attacks)} / {len(wrong)} / {int(changed)} / {len(recorder.connections)}"
        f" ({len(accepted)} valid controls accepted)"
    )
    assert not wrong, "\n".join(wrong)
    assert not changed
    assert recorder.connections == [], "a header made the server connect out"


async def test_action_token_attacks(
    client: Client,
    clock: FrozenClock,
    keys: dict[str, Any],
    recorder: Recorder,
    redis_url: str,
) -> None:
    a = Attack(clock)
    now = int(clock.now)
    bearer = a.user()
    # Controls: a plain token, one whose expiry is a second inside the leeway, nbf at it.
    controls: list[dict[str, Any]] = [{}, {"iat": now - 100, "exp": now - LEEWAY + 1}, {"nbf": now + LEEWAY}]  # fmt: skip
    for changes in controls:
        nonce = fresh_nonce()
        status, data, _ = await send(client, bearer, a.action(nonce, **changes), nonce, user=a.victim)  # fmt: skip
        assert status == 200, (changes, data)

    def cases(nonce: str) -> dict[str, str]:
        good = a.action(nonce)
        return {
            "alg none": a.action(nonce, alg="none"),
            "alg none, good signature kept": edit_header(good, alg="none"),
            "HS256 with the RSA public PEM": a.action(nonce, key=pem(keys["rsa"])),
            "HS256 with the RSA PEM and its kid": a.action(
                nonce, key=pem(keys["rsa"]), header={"kid": "rsa-1"}
            ),  # fmt: skip
            "RS256 with our JWKS key": a.action(
                nonce, key=keys["rsa"], alg="RS256", header={"kid": "rsa-1"}
            ),  # fmt: skip
            "HS512 with the action secret": a.action(nonce, alg="HS512"),
            "signed with the user JWT secret": a.action(nonce, key=JWT_SECRET),
            "a guessed secret, path kid": a.action(
                nonce, key="secret", header={"kid": "../../action.key"}
            ),  # fmt: skip
            "a guessed secret, SQL kid": a.action(
                nonce, key="secret", header={"kid": "x' UNION SELECT 'secret"}
            ),  # fmt: skip
            "a guessed secret, jku to a local port": a.action(
                nonce, key="secret", header={"jku": recorder.url("jwks.json")}
            ),  # fmt: skip
            "our secret, x5u to a local port, edited": edit_claims(
                a.action(nonce, header={"x5u": recorder.url("c")}), delta=1000
            ),  # fmt: skip
            "unknown crit": a.action(nonce, header={"crit": ["x-policy"], "x-policy": 1}),
            "exp exactly at the leeway": a.action(nonce, iat=now - 100, exp=now - LEEWAY),
            "exp just past the leeway": a.action(nonce, iat=now - 100, exp=now - LEEWAY - 1),
            "iat past the leeway in the future": a.action(
                nonce, iat=now + LEEWAY + 1, exp=now + 60
            ),  # fmt: skip
            "nbf past the leeway in the future": a.action(nonce, nbf=now + LEEWAY + 1),
            "lifetime one second too long": a.action(nonce, exp=now + 301),
            "iat missing": a.action(nonce, iat=None),
            "exp missing": a.action(nonce, exp=None),
            "delta edited after signing": edit_claims(good, delta=1000),
            "sub edited after signing": edit_claims(a.action(nonce, sub=new_user()), sub=a.victim),
            "nonce edited after signing": edit_claims(
                a.action("captured-nonce-0000001"), nonce=nonce
            ),  # fmt: skip
            "action edited to bonus after signing": edit_claims(good, action="bonus"),
            "a user JWT as the action token": a.user(),
            "a user JWT with the action's claims": sign(
                {"alg": "HS256"}, json.loads(unb64(good.split(".")[1])), JWT_SECRET
            ),  # fmt: skip
        }

    before = await redis_state(redis_url)
    wrong = []
    tried = 0
    for name in cases("x" * 16):
        nonce = fresh_nonce()
        token = cases(nonce)[name]
        status, data, _ = await send(client, bearer, token, nonce, user=a.victim)
        tried += 1
        if not (status == 403 and error_body_ok(data, "invalid_action_token")):
            wrong.append(f"{name}: {status} {data}")
    changed = await redis_state(redis_url) != before
    print(
        f"\naction token attacks tried / accepted / state changes / outbound connections:"
        f" {tried} / {len(wrong)} / {int(changed)} / {len(recorder.connections)}"
    )
    assert not wrong, "\n".join(wrong)
    assert not changed
    assert recorder.connections == []


async def test_captured_action_tokens(client: Client, clock: FrozenClock, redis_url: str) -> None:
    """Reuse of a used token: under a new nonce, as is, with another body, by another user."""
    a = Attack(clock)
    owner = a.user()
    nonce = fresh_nonce()
    token = a.action(nonce, delta=7)
    status, first, _ = await send(client, owner, token, nonce, user=a.victim, delta=7)
    assert status == 200, first
    # B holds a valid JWT of their own and A's captured action token.
    b = Attack(clock)
    thief = b.user()
    # A's token, unused, posted by B for A (B is not an admin).
    spare_nonce = fresh_nonce()
    spare = a.action(spare_nonce, delta=9)
    before = await redis_state(redis_url)
    attempts: list[tuple[str, str, str, str, str, int, int, str]] = [
        (
            "reused under a new nonce",
            owner,
            token,
            fresh_nonce(),
            a.victim,
            7,
            403,
            "invalid_action_token",
        ),  # fmt: skip
        ("reused as is", owner, token, nonce, a.victim, 7, 409, "replay"),
        ("reused as is by user B", thief, token, nonce, a.victim, 7, 403, "forbidden"),
        (
            "reused with another delta",
            owner,
            token,
            nonce,
            a.victim,
            8,
            403,
            "invalid_action_token",
        ),  # fmt: skip
        (
            "a new token under the used nonce",
            owner,
            a.action(nonce, delta=3),
            nonce,
            a.victim,
            3,
            409,
            "replay",
        ),  # fmt: skip
        (
            "A's unused token posted by B for A",
            thief,
            spare,
            spare_nonce,
            a.victim,
            9,
            403,
            "forbidden",
        ),  # fmt: skip
        (
            "A's unused token posted by B for B",
            thief,
            spare,
            spare_nonce,
            b.victim,
            9,
            403,
            "invalid_action_token",
        ),  # fmt: skip
        (
            "A's unused token, B's JWT as admin claim edited",
            edit_claims(thief, scope="scores:admin"),
            spare,
            spare_nonce,
            a.victim,
            9,
            401,
            "invalid_token",
        ),  # fmt: skip
    ]
    for name, bearer, tok, n, user, delta, want, code in attempts:
        status, data, _ = await send(client, bearer, tok, n, user=user, delta=delta)
        assert status == want and error_body_ok(data, code), (name, status, data)
        if code == "replay":
            assert data["original"] == {
                "eventId": first["eventId"],
                "score": first["score"],
                "rank": first["rank"],
            }, name
    assert await redis_state(redis_url) == before
    # The spare token still works for its owner: the refusals consumed nothing.
    status, data, _ = await send(client, owner, spare, spare_nonce, user=a.victim, delta=9)
    assert status == 200 and data["score"] == 16, data
    print(f"\ncaptured action token reuses tried / accepted: {len(attempts)} / 0")


async def test_a_remembered_token_expires_at_the_same_instant(
    client: Client, clock: FrozenClock, keys: dict[str, Any], redis_url: str
) -> None:
    """Verified user JWTs are cached; the cache must not outlive exp + leeway by an instant."""
    a = Attack(clock)
    start = int(clock.now)
    bearers = [
        a.user(exp=start + 5),
        a.user(keys["rsa"], "RS256", header={"kid": "rsa-1"}, exp=start + 5),
    ]
    for when, want in ((start, 200), (start + 5 + LEEWAY - 1, 200), (start + 5 + LEEWAY, 401)):
        clock.now = float(when)
        for bearer in bearers:
            nonce = fresh_nonce()
            before = await redis_state(redis_url)
            status, data, _ = await send(client, bearer, a.action(nonce), nonce, user=a.victim)
            assert status == want, (when - start, data)
            if want == 401:
                assert error_body_ok(data, "invalid_token")
                assert await redis_state(redis_url) == before
