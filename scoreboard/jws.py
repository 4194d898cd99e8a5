"""A strict, lean verifier for HS256 compact JWTs: the two tokens of every increment.

pyjwt's generic path (header parse, key preparation, stdlib json, claim validation)
costs about 50 µs a token, close to half of an increment's CPU time. This verifier does
only what an HS256 token with our own secret needs and keeps every check pyjwt makes
for it: exactly three base64url segments (no padding, no stray characters), a JSON
object header with `alg` exactly "HS256", no `crit` or `b64` extensions, a
constant-time HMAC-SHA256 comparison, a JSON object payload, and the time claims
(`exp`, `nbf`, `iat` numbers checked with leeway) plus `iss`/`aud` when configured.
Everything else (public keys, minting) stays with pyjwt; a differential test keeps the
two in agreement.
"""

from __future__ import annotations

import binascii
import hmac
import re
from typing import Any

import orjson

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")


class TokenError(Exception):
    """A token failed verification; `reason` is a short metric-friendly label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _b64(segment: bytes) -> bytes:
    if len(segment) % 4 == 1 or not _SEGMENT.fullmatch(segment):
        raise TokenError("malformed", "token segment is not base64url")
    try:
        return binascii.a2b_base64(
            segment.replace(b"-", b"+").replace(b"_", b"/") + b"=" * (-len(segment) % 4),
            strict_mode=True,
        )
    except binascii.Error:
        raise TokenError("malformed", "token segment is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TokenError("malformed", f"token {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError("malformed", f"token {what} is not a JSON object")
    return value


def split(token: str) -> tuple[bytes, bytes, bytes]:
    """The three segments of a compact JWS."""
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise TokenError("malformed", "token is not ASCII") from None
    parts = raw.split(b".")
    if len(parts) != 3:
        raise TokenError("malformed", "token is not a compact JWS")
    return parts[0], parts[1], parts[2]


def header(token: str) -> dict[str, Any]:
    """The unverified header (only for choosing a key)."""
    return _json_object(_b64(split(token)[0]), "header")


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError("malformed", f"token {name} must be a number")
    return float(value)


def check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    """exp (required), nbf and iat, with leeway: the checks pyjwt makes."""
    exp = _number(claims, "exp")
    if exp is None:
        raise TokenError("missing_claim", "token has no exp")
    # Valid while now is *before* exp (RFC 7519 4.1.4), as pyjwt decides for public keys.
    if now >= exp + leeway:
        raise TokenError("expired", "token has expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now < nbf - leeway:
        raise TokenError("not_yet_valid", "token is not yet valid (nbf)")
    iat = _number(claims, "iat")
    if iat is not None and iat > now + leeway:
        raise TokenError("not_yet_valid", "token was issued in the future (iat)")


def check_issuer_audience(claims: dict[str, Any], issuer: str | None, audience: str | None) -> None:
    """iss must equal the configured issuer; aud must be or contain the configured audience."""
    if issuer is not None:
        if "iss" not in claims:
            raise TokenError("missing_claim", "token has no iss")
        if claims["iss"] != issuer:
            raise TokenError("issuer", "token issuer is not accepted")
    if audience is not None:
        if "aud" not in claims:
            raise TokenError("missing_claim", "token has no aud")
        aud = claims["aud"]
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
            raise TokenError("audience", "token aud is malformed")
        if audience not in auds:
            raise TokenError("audience", "token audience is not accepted")


class HS256:
    """Verifies HS256 compact JWTs signed with one secret."""

    __slots__ = ("_mac",)

    def __init__(self, secret: str) -> None:
        # Keyed once; each token's check copies it (cheaper than keying HMAC again).
        self._mac = hmac.new(secret.encode(), digestmod="sha256")

    def verify(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header, claims) of a token whose signature is good; raises TokenError."""
        h, p, s = split(token)
        head = _json_object(_b64(h), "header")
        if head.get("alg") != "HS256":
            raise TokenError("algorithm", "token algorithm is not accepted")
        if "crit" in head or "b64" in head:
            # No extension is understood here, so a token that demands one is refused.
            raise TokenError("crit", "token has a critical header extension")
        signature = _b64(s)
        mac = self._mac.copy()
        mac.update(h + b"." + p)
        expected = mac.digest()
        if not hmac.compare_digest(signature, expected):
            raise TokenError("bad_signature", "token signature is invalid")
        return head, _json_object(_b64(p), "payload")
