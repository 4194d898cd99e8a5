"""User JWT and action-token verification and minting (pyjwt), algorithms pinned."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jwt
from jwt.types import Options

from . import jws
from .config import ConfigError, Settings
from .errors import InvalidActionToken, InvalidToken

SCOPE_BONUS = "scores:bonus"
SCOPE_ADMIN = "scores:admin"
BONUS_ACTION = "bonus"
DEFAULT_ACTION = "score"
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Tokens longer than this are refused before any parsing.
MAX_TOKEN_LEN = 8192
# Verified user JWTs are remembered until they expire; bounded so a flood of
# distinct tokens cannot grow memory without limit.
_CLAIMS_CACHE_MAX = 50_000
_PUBLIC_ALGS = {"RS256", "ES256", "EdDSA"}


def parse_uuid(value: object) -> str | None:
    """The canonical lowercase form of a UUID string, or None when it is not one."""
    if isinstance(value, str) and len(value) == 36 and UUID_RE.fullmatch(value):
        return value.lower()
    return None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a verified user JWT's subject and scopes."""

    user_id: str
    scopes: frozenset[str]
    exp: float

    @property
    def admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes

    @property
    def bonus(self) -> bool:
        return SCOPE_BONUS in self.scopes


class Action(NamedTuple):
    """A verified action token's claims (a NamedTuple, like the board's per-request types)."""

    user_id: str
    nonce: str
    delta: int
    action: str
    iat: int
    exp: int

    @property
    def bonus(self) -> bool:
        return self.action == BONUS_ACTION


def load_jwks(path: str) -> dict[str, jwt.PyJWK]:
    """Public keys by `kid` from a JWKS file; each key keeps its own algorithm."""
    try:
        keyset = jwt.PyJWKSet.from_json(Path(path).read_text())
    except (OSError, jwt.PyJWKSetError, jwt.PyJWKError, ValueError) as e:
        raise ConfigError(f"SCOREBOARD_JWT_PUBLIC_KEYS: cannot load {path}: {e}") from None
    keys: dict[str, jwt.PyJWK] = {}
    for key in keyset.keys:
        if not key.key_id:
            raise ConfigError(f"SCOREBOARD_JWT_PUBLIC_KEYS: every key needs a kid ({path})")
        if key.algorithm_name not in _PUBLIC_ALGS:
            raise ConfigError(
                f"SCOREBOARD_JWT_PUBLIC_KEYS: key {key.key_id!r} has algorithm "
                f"{key.algorithm_name}; only RS256, ES256 and EdDSA public keys are accepted"
            )
        keys[key.key_id] = key
    return keys


def _reason(e: jwt.PyJWTError) -> str:
    if isinstance(e, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(e, jwt.ImmatureSignatureError):
        return "not_yet_valid"
    if isinstance(e, jwt.InvalidSignatureError):
        return "bad_signature"
    if isinstance(e, jwt.InvalidAudienceError):
        return "audience"
    if isinstance(e, jwt.InvalidIssuerError):
        return "issuer"
    if isinstance(e, jwt.MissingRequiredClaimError):
        return "missing_claim"
    if isinstance(e, jwt.InvalidAlgorithmError):
        return "algorithm"
    return "malformed"


class Verifier:
    """Verifies user JWTs and action tokens with the configured keys.

    HS256 tokens go through the lean `jws.HS256` verifier; public-key tokens (selected
    by `kid` from the JWKS file) through pyjwt with the key's own algorithm pinned.
    """

    def __init__(self, settings: Settings) -> None:
        self._user_hs = jws.HS256(settings.jwt_secret) if settings.jwt_secret else None
        self._action_hs = jws.HS256(settings.action_secret)
        self._jwks = load_jwks(settings.jwt_public_keys) if settings.jwt_public_keys else {}
        self._issuer = settings.jwt_issuer or None
        self._audience = settings.jwt_audience or None
        self._leeway = settings.jwt_leeway_s
        self._max_ttl = settings.action_token_max_ttl_s
        self._cache: dict[str, Principal] = {}
        self._public_options: Options = {
            "require": ["exp", "sub"],
            "verify_aud": self._audience is not None,
        }

    def _public(self, token: str, jwk: jwt.PyJWK, alg: object) -> dict[str, Any]:
        if alg != jwk.algorithm_name:
            raise InvalidToken("token algorithm does not match its key", reason="algorithm")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                jwk.key,
                algorithms=[jwk.algorithm_name],
                options=self._public_options,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(f"token rejected: {e}", reason=_reason(e)) from None
        return claims

    def _claims(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_LEN:
            raise InvalidToken("token too long", reason="too_long")
        try:
            if self._jwks:
                head = jws.header(token)
                kid = head.get("kid")
                jwk = self._jwks.get(kid) if isinstance(kid, str) else None
                if jwk is not None:
                    if "crit" in head:
                        raise jws.TokenError("crit", "token has a critical header extension")
                    return self._public(token, jwk, head.get("alg"))
            if self._user_hs is None:
                raise jws.TokenError("algorithm", "token algorithm or key id is not accepted")
            _, claims = self._user_hs.verify(token)
            jws.check_times(claims, time.time(), self._leeway)
            jws.check_issuer_audience(claims, self._issuer, self._audience)
        except jws.TokenError as e:
            raise InvalidToken(str(e), reason=e.reason) from None
        return claims

    def user(self, token: str) -> Principal:
        """Verify a user JWT; raises InvalidToken. Verified tokens are cached until exp."""
        cached = self._cache.get(token)
        if cached is not None:
            if time.time() < cached.exp + self._leeway:
                return cached
            del self._cache[token]
        claims = self._claims(token)
        user_id = parse_uuid(claims.get("sub"))
        if user_id is None:
            raise InvalidToken("token sub is not a UUID", reason="sub")
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        try:
            exp = float(claims["exp"])
        except OverflowError:
            # A public-key token's exp is any JSON integer (10**400 passes pyjwt's checks).
            raise InvalidToken("token exp is out of range", reason="malformed") from None
        principal = Principal(user_id, scopes, exp)
        # A token that is not yet valid (nbf) must not be remembered as valid.
        if "nbf" not in claims:
            if len(self._cache) >= _CLAIMS_CACHE_MAX:
                self._cache.clear()
            self._cache[token] = principal
        return principal

    def action(self, token: str) -> Action:
        """Verify an action token's signature, lifetime and claim types."""
        if len(token) > MAX_TOKEN_LEN:
            raise InvalidActionToken("token too long", reason="too_long")
        try:
            _, claims = self._action_hs.verify(token)
            for name in ("exp", "iat", "sub", "nonce", "delta"):
                if name not in claims:
                    raise jws.TokenError("missing_claim", f"action token has no {name}")
            jws.check_times(claims, time.time(), self._leeway)
        except jws.TokenError as e:
            raise InvalidActionToken(f"action token rejected: {e}", reason=e.reason) from None
        iat, exp, delta = claims["iat"], claims["exp"], claims["delta"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp, delta)):
            raise InvalidActionToken("action token iat, exp and delta must be integers")
        if exp - iat > self._max_ttl:
            raise InvalidActionToken(
                f"action token lives longer than {self._max_ttl} s", reason="ttl"
            )
        user_id = parse_uuid(claims["sub"])
        nonce = claims["nonce"]
        if user_id is None or not isinstance(nonce, str) or not NONCE_RE.fullmatch(nonce):
            raise InvalidActionToken("action token sub or nonce is malformed", reason="claims")
        action = claims.get("action", DEFAULT_ACTION)
        if not isinstance(action, str) or not 1 <= len(action) <= 64:
            raise InvalidActionToken("action token action must be a short string", reason="claims")
        return Action(user_id, nonce, delta, action, iat, exp)

    @property
    def leeway(self) -> int:
        return self._leeway


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def mint_user_token(settings: Settings, user_id: str, scope: str = "", ttl_s: int = 3600) -> str:
    """A user JWT signed with the configured HS256 secret."""
    if not settings.jwt_secret:
        raise ConfigError("minting needs SCOREBOARD_JWT_SECRET (public keys cannot sign)")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_s}
    if scope:
        claims["scope"] = scope
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def mint_action_token(
    settings: Settings,
    user_id: str,
    delta: int,
    action: str = DEFAULT_ACTION,
    ttl_s: int | None = None,
    nonce: str | None = None,
) -> tuple[str, str]:
    """(nonce, action token) for one action of `user_id`."""
    nonce = nonce or new_nonce()
    now = int(time.time())
    ttl = settings.action_token_max_ttl_s if ttl_s is None else ttl_s
    claims = {
        "sub": user_id,
        "nonce": nonce,
        "delta": delta,
        "action": action,
        "iat": now,
        "exp": now + ttl,
    }
    return nonce, jwt.encode(claims, settings.action_secret, algorithm="HS256")


def event_id(board: str, nonce: str) -> str:
    """The name-based (version 5) event id: the same board and nonce give the same UUID."""
    # uuid.uuid5 without its object overhead; tests compare the two. The version nibble
    # becomes 5 and the variant bits 10 (the nibble one of 8, 9, a, b).
    sha = _EVENT_SHA1.copy()
    sha.update(f"{board}/{nonce}".encode())
    h = sha.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


EVENT_NAMESPACE = uuid.UUID("6f1c7a53-2d0e-5b8e-9a43-5c0f3e1d2b77")
_EVENT_NS_BYTES = EVENT_NAMESPACE.bytes
_EVENT_SHA1 = hashlib.sha1(_EVENT_NS_BYTES)
