"""The lean HS256 verifier against pyjwt: it never accepts what pyjwt refuses."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoreboard import jws

SECRET = "differential-secret-" + "s" * 32
LEEWAY = 10


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: str) -> str:
    import hashlib
    import hmac

    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(claims).encode())
    sig = hmac.new(key.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


def fast_accepts(
    token: str, issuer: str | None = None, audience: str | None = None
) -> dict[str, Any] | None:
    try:
        _, claims = jws.HS256(SECRET).verify(token)
        jws.check_times(claims, time.time(), LEEWAY)
        jws.check_issuer_audience(claims, issuer, audience)
        return claims
    except jws.TokenError:
        return None


def pyjwt_accepts(
    token: str, issuer: str | None = None, audience: str | None = None
) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            options={"require": ["exp"], "verify_aud": audience is not None},
            issuer=issuer,
            audience=audience,
            leeway=LEEWAY,
        )
        return claims
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


offsets = st.one_of(st.none(), st.integers(-100, 100), st.floats(-100, 100, allow_nan=False))
mutations = st.sampled_from(["none", "flip", "pad", "space", "plus", "dot", "truncate", "upper"])


def mutate(token: str, how: str, pos: int) -> str:
    if how == "none" or not token:
        return token
    i = pos % len(token)
    if how == "flip":
        c = token[i]
        return token[:i] + ("A" if c != "A" else "B") + token[i + 1 :]
    if how == "pad":
        return token + "="
    if how == "space":
        return token[:i] + " " + token[i:]
    if how == "plus":
        return token[:i] + "+" + token[i + 1 :]
    if how == "dot":
        return token + "."
    if how == "truncate":
        return token[:i]
    return token.upper()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alg=st.sampled_from(["HS256", "HS256", "HS256", "HS384", "none", "RS256", "hs256"]),
    extra_header=st.sampled_from([{}, {}, {"kid": "x"}, {"crit": ["exp"]}, {"b64": False, "crit": ["b64"]}, {"typ": "JWT"}]),
    exp=offsets,
    nbf=offsets,
    iat=offsets,
    right_key=st.booleans(),
    how=mutations,
    pos=st.integers(0, 1000),
    iss=st.sampled_from([None, "me", "m", "mee", 5]),
    aud=st.sampled_from([None, "you", ["you", "x"], ["x"], "yo", 7]),
    check_iss_aud=st.booleans(),
)  # fmt: skip
def test_never_accepts_what_pyjwt_refuses(
    alg: str, extra_header: dict[str, Any], exp: float | None, nbf: float | None, iat: float | None,
    right_key: bool, how: str, pos: int, iss: Any, aud: Any, check_iss_aud: bool,
) -> None:  # fmt: skip
    now = time.time()
    claims: dict[str, Any] = {"sub": "u"}
    for name, off in (("exp", exp), ("nbf", nbf), ("iat", iat)):
        if off is not None:
            claims[name] = int(now + off) if isinstance(off, int) else now + off
    if iss is not None:
        claims["iss"] = iss
    if aud is not None:
        claims["aud"] = aud
    header = {"alg": alg, **extra_header}
    token = mutate(forge(header, claims, SECRET if right_key else "other-" + "k" * 32), how, pos)
    issuer, audience = ("me", "you") if check_iss_aud else (None, None)
    fast = fast_accepts(token, issuer, audience)
    slow = pyjwt_accepts(token, issuer, audience)
    if fast is not None:
        assert slow == fast, (header, claims, how)


def test_agrees_on_good_tokens() -> None:
    now = int(time.time())
    for claims in (
        {"sub": "a", "exp": now + 60},
        {"sub": "a", "exp": now - 5, "iat": now - 50, "nbf": now + 5},
        {"sub": "a", "exp": now + 60, "iss": "me", "aud": ["x", "you"]},
    ):
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        assert fast_accepts(token) == pyjwt_accepts(token) == claims


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "é.b.c", "....", "eyJ.eyJ.", "=.=.="],
)
def test_garbage(token: str) -> None:
    assert fast_accepts(token) is None
