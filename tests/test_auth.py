"""User JWT and action token verification: keys, algorithms, claims, leeway."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from scoreboard.auth import Verifier
from scoreboard.config import Settings
from scoreboard.errors import InvalidActionToken, InvalidToken

from .conftest import ACTION_SECRET, JWT_SECRET, new_user

USER = "3f2b1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


@pytest.fixture(scope="module")
def keypairs() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.fixture
def jwks_settings(tmp_path: Path, keypairs: dict[str, Any]) -> Settings:
    keys = []
    for kid, alg, algo in (("rsa-1", "RS256", RSAAlgorithm), ("ec-1", "ES256", ECAlgorithm), ("ed-1", "EdDSA", OKPAlgorithm)):  # fmt: skip
        name = {"rsa-1": "rsa", "ec-1": "ec", "ed-1": "ed"}[kid]
        jwk = json.loads(algo.to_jwk(keypairs[name].public_key()))
        jwk.update(kid=kid, alg=alg, use="sig")
        keys.append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return Settings(
        redis_url="redis://x",
        jwt_secret=JWT_SECRET,
        jwt_public_keys=str(path),
        action_secret=ACTION_SECRET,
    )


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"sub": USER, "iat": now, "exp": now + 60}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def test_public_keys_each_with_their_algorithm(
    jwks_settings: Settings, keypairs: dict[str, Any]
) -> None:
    v = Verifier(jwks_settings)
    for kid, alg, key in (
        ("rsa-1", "RS256", "rsa"),
        ("ec-1", "ES256", "ec"),
        ("ed-1", "EdDSA", "ed"),
    ):
        token = jwt.encode(
            claims(scope="scores:admin"), keypairs[key], algorithm=alg, headers={"kid": kid}
        )
        p = v.user(token)
        assert p.user_id == USER and p.admin
    # The HS256 secret still works beside the public keys.
    assert v.user(jwt.encode(claims(), JWT_SECRET, algorithm="HS256")).user_id == USER


def test_public_key_attacks(jwks_settings: Settings, keypairs: dict[str, Any]) -> None:
    v = Verifier(jwks_settings)
    pem = (
        keypairs["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # HS256 signed with the public key's PEM bytes (key confusion).
    forged = jwt.api_jws.PyJWS().encode(
        json.dumps(claims()).encode(), b"x" * 32, algorithm="HS256", headers={"kid": "rsa-1"}
    )
    import hashlib
    import hmac

    head, payload, _ = forged.split(".")
    sig = hmac.new(pem, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{head}.{payload}.{jwt.utils.base64url_encode(sig).decode()}"
    cases = {
        "key confusion": forged,
        "wrong alg for kid": jwt.encode(claims(), keypairs["ec"], algorithm="ES256", headers={"kid": "rsa-1"}),
        "unknown kid": jwt.encode(claims(), keypairs["rsa"], algorithm="RS256", headers={"kid": "../../etc/passwd"}),
        "sql kid": jwt.encode(claims(), keypairs["rsa"], algorithm="RS256", headers={"kid": "' OR 1=1 --"}),
        "no kid RS256": jwt.encode(claims(), keypairs["rsa"], algorithm="RS256"),
        "other rsa key": jwt.encode(
            claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256", headers={"kid": "rsa-1"}
        ),
        "alg none": jwt.encode(claims(), "", algorithm="none"),
        "crit header": jwt.encode(claims(), JWT_SECRET, algorithm="HS256", headers={"crit": ["exp"], "exp": 1}),
    }  # fmt: skip
    for name, token in cases.items():
        with pytest.raises(InvalidToken):
            v.user(token)
        assert name


def test_jku_and_x5u_are_ignored_never_fetched(
    jwks_settings: Settings, keypairs: dict[str, Any]
) -> None:
    v = Verifier(jwks_settings)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        claims(), other, algorithm="RS256",
        headers={"kid": "rsa-1", "jku": "http://127.0.0.1:1/keys", "x5u": "http://127.0.0.1:1/x"},
    )  # fmt: skip
    with pytest.raises(InvalidToken):
        v.user(token)


def test_issuer_audience_and_leeway() -> None:
    s = Settings(
        redis_url="redis://x",
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        jwt_issuer="https://issuer.example",
        jwt_audience="scoreboard",
        jwt_leeway_s=10,
    )
    v = Verifier(s)
    now = int(time.time())
    good = {"iss": "https://issuer.example", "aud": "scoreboard"}
    assert v.user(jwt.encode(claims(**good), JWT_SECRET)).user_id == USER
    assert v.user(jwt.encode(claims(**good, exp=now - 5), JWT_SECRET)).user_id == USER  # in leeway
    bad = {
        "no iss": claims(aud="scoreboard"),
        "iss prefix": claims(iss="https://issuer.ex", aud="scoreboard"),
        "wrong aud": claims(iss="https://issuer.example", aud="other"),
        "aud list without ours": claims(iss="https://issuer.example", aud=["a", "b"]),
        "expired past leeway": claims(**good, exp=now - 11),
        "nbf in future": claims(**good, nbf=now + 30),
        "iat in future": claims(**good, iat=now + 30),
        "sub missing": claims(**good, sub=None),
        "sub not uuid": claims(**good, sub="root"),
    }
    for name, body in bad.items():
        with pytest.raises(InvalidToken):
            v.user(jwt.encode(body, JWT_SECRET))
        assert name


def test_unconfigured_iss_aud_are_not_checked() -> None:
    s = Settings(redis_url="redis://x", jwt_secret=JWT_SECRET, action_secret=ACTION_SECRET)
    v = Verifier(s)
    assert v.user(jwt.encode(claims(iss="x", aud="y"), JWT_SECRET)).user_id == USER


def test_verified_tokens_are_cached_until_exp() -> None:
    s = Settings(
        redis_url="redis://x", jwt_secret=JWT_SECRET, action_secret=ACTION_SECRET, jwt_leeway_s=0
    )
    v = Verifier(s)
    token = jwt.encode(claims(exp=int(time.time()) + 1), JWT_SECRET)
    assert v.user(token).user_id == USER
    time.sleep(2.1)
    with pytest.raises(InvalidToken):
        v.user(token)


def test_action_token_checks() -> None:
    s = Settings(
        redis_url="redis://x",
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        action_token_max_ttl_s=300,
    )
    v = Verifier(s)
    now = int(time.time())
    base = {"sub": USER, "nonce": "n" * 20, "delta": 5, "iat": now, "exp": now + 60}
    a = v.action(jwt.encode(base, ACTION_SECRET))
    assert (a.user_id, a.nonce, a.delta, a.action) == (USER, "n" * 20, 5, "score")
    assert v.action(jwt.encode({**base, "action": "bonus"}, ACTION_SECRET)).bonus
    bad = {
        "ttl": {**base, "exp": now + 301},
        "delta float": {**base, "delta": 5.0},
        "delta bool": {**base, "delta": True},
        "nonce short": {**base, "nonce": "abc"},
        "nonce chars": {**base, "nonce": "n" * 19 + "/"},
        "sub": {**base, "sub": "x"},
        "action type": {**base, "action": 5},
        "iat string": {**base, "iat": str(now)},
    }
    for name, body in bad.items():
        with pytest.raises(InvalidActionToken):
            v.action(jwt.encode(body, ACTION_SECRET))
        assert name
    with pytest.raises(InvalidActionToken):
        v.action(jwt.encode(base, JWT_SECRET))
    with pytest.raises(InvalidActionToken):
        v.action(jwt.encode(base, ACTION_SECRET * 2, algorithm="HS512"))


def test_secret_rules() -> None:
    from scoreboard.config import ConfigError

    base = Settings(redis_url="redis://x", jwt_secret=JWT_SECRET, action_secret=ACTION_SECRET)
    base.with_secrets()
    for bad in (
        replace(base, action_secret=""),
        replace(base, jwt_secret=""),
        replace(base, jwt_secret="short"),
        replace(base, action_secret="short"),
        replace(base, action_secret=JWT_SECRET),
        replace(base, jwt_public_keys="/nonexistent/jwks.json"),
    ):
        with pytest.raises(ConfigError):
            bad.with_secrets()
    assert new_user()


def test_event_id_is_uuid5_of_board_and_nonce() -> None:
    import uuid

    from scoreboard.auth import EVENT_NAMESPACE, event_id

    for board, nonce in (("global", "n" * 16), ("season-1", "abc_DEF-123" * 5), ("b", "x" * 128)):
        assert event_id(board, nonce) == str(uuid.uuid5(EVENT_NAMESPACE, f"{board}/{nonce}"))
    assert event_id("a", "n" * 16) != event_id("b", "n" * 16)
