"""Score routes: increment, top, one user, around a user."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from .. import auth, keys, logs
from ..auth import Action, Principal
from ..board import TOP_SIZE
from ..errors import (
    BadRequest,
    Forbidden,
    InvalidActionToken,
    InvalidDelta,
    InvalidToken,
    NotFound,
    PayloadTooLarge,
    ScoreboardError,
    UnsupportedMediaType,
)
from ..hub import JSON_CONTENT_TYPE
from . import spec
from .middleware import LOG_FIELDS, request_id
from .state import BOARD, HUB, METRICS, SETTINGS, VERIFIER

MAX_BODY = 16 * 1024
_BODY_FIELDS = frozenset(("userId", "delta", "actionToken"))
_JSON = "application/json"


# The header as aiohttp would build it from content_type and charset, built once.
_JSON_HEADERS = CIMultiDict({"Content-Type": JSON_CONTENT_TYPE})


def json_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    all_headers = _JSON_HEADERS.copy()
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=body, headers=all_headers)


def board_id(request: web.Request) -> str:
    """The board named by the path (`global` for the plain `/scores/…` routes)."""
    board = request.match_info.get("boardId")
    if board is None:
        return keys.GLOBAL_BOARD
    if not keys.BOARD_ID_RE.fullmatch(board):
        raise BadRequest("boardId must be 1-64 characters of a-z, 0-9, _ and -")
    return board


def path_user(request: web.Request) -> str:
    user = auth.parse_uuid(request.match_info["userId"])
    if user is None:
        raise BadRequest("userId must be a UUID")
    return user


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    if "?" not in request.raw_path:
        return default  # no query string: nothing to parse
    values = request.query.getall(name, [])
    if not values:
        return default
    raw = values[0]
    if len(values) > 1 or not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return value


def authenticate(request: web.Request) -> Principal:
    """The caller of a bearer-protected route; raises InvalidToken."""
    values = request.headers.getall("Authorization", [])
    if len(values) != 1:
        raise InvalidToken(
            "exactly one Authorization: Bearer header is required",
            reason="missing" if not values else "duplicate_header",
        )
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("Authorization must be 'Bearer <token>'", reason="scheme")
    return request.app[VERIFIER].user(token)


async def _read_json(request: web.Request) -> Any:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise PayloadTooLarge(f"the body must be at most {MAX_BODY} bytes")
    if request.content_type != _JSON:
        raise UnsupportedMediaType("Content-Type must be application/json")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("the body must be UTF-8 JSON")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body must be at most {MAX_BODY} bytes") from None
    except web.RequestPayloadError:
        # A Content-Encoding the body does not decode with, or a body cut short.
        raise BadRequest("the body could not be read (framing or Content-Encoding)") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None


def _parse_increment(body: Any, request: web.Request) -> tuple[str, int, str, str]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if body.keys() != _BODY_FIELDS:
        missing = sorted(_BODY_FIELDS - body.keys())
        unknown = sorted(body.keys() - _BODY_FIELDS)
        raise BadRequest(f"body fields: missing {missing}, unknown {unknown}"[:300])
    user_id = auth.parse_uuid(body["userId"])
    if user_id is None:
        raise BadRequest("userId must be a UUID string")
    delta = body["delta"]
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise BadRequest("delta must be an integer")
    token = body["actionToken"]
    if not isinstance(token, str) or not token:
        raise BadRequest("actionToken must be a string")
    nonces = request.headers.getall("X-Action-Nonce", [])
    if len(nonces) != 1 or not auth.NONCE_RE.fullmatch(nonces[0]):
        raise BadRequest("X-Action-Nonce must be 16-128 characters of A-Z, a-z, 0-9, _ and -")
    return user_id, delta, token, nonces[0]


def _check_action(action: Action, user_id: str, delta: int, nonce: str) -> None:
    if action.user_id != user_id:
        raise InvalidActionToken("the action token belongs to another user", reason="sub")
    if action.nonce != nonce:
        raise InvalidActionToken("the action token's nonce is not X-Action-Nonce", reason="nonce")
    if action.delta != delta:
        raise InvalidActionToken("the action token's delta is not the body's", reason="delta")


def _authorize(principal: Principal, action: Action, user_id: str, delta: int) -> None:
    if user_id != principal.user_id and not principal.admin:
        raise Forbidden(
            "posting for another user needs the scores:admin scope", reason="other_user"
        )
    if action.bonus and not principal.bonus:
        raise Forbidden("bonus actions need the scores:bonus scope", reason="bonus_scope")
    if delta < 0 and not principal.admin:
        raise Forbidden("negative deltas need the scores:admin scope", reason="penalty_scope")


async def increment(request: web.Request) -> web.Response:
    """POST /scores/increment: the hot path."""
    start = time.perf_counter()
    app = request.app
    fields: dict[str, Any] = {"requestId": request_id(request), "boardId": None}
    request[LOG_FIELDS] = fields
    outcome = "error"
    try:
        board = board_id(request)
        fields["boardId"] = board
        principal = authenticate(request)
        fields["userId"] = principal.user_id
        user_id, delta, token, nonce = _parse_increment(await _read_json(request), request)
        fields["userId"], fields["delta"] = user_id, delta
        verifier = app[VERIFIER]
        action = verifier.action(token)
        _check_action(action, user_id, delta, nonce)
        _authorize(principal, action, user_id, delta)
        settings = app[SETTINGS]
        limit = settings.max_bonus_delta if action.bonus else settings.max_delta
        if delta == 0 or abs(delta) > limit:
            raise InvalidDelta(f"delta must be non-zero and at most {limit} in size")
        result = await app[BOARD].increment(
            board,
            user_id,
            delta,
            nonce,
            auth.event_id(board, nonce),
            action.action,
            action.exp,
        )
        outcome = "ok"
    except ScoreboardError as e:
        # The middleware counts auth failures and writes the security lines.
        outcome = e.outcome
        reason = e.auth_reason()
        if reason is not None:
            fields["reason"] = reason
        raise
    finally:
        app[METRICS].outcome[outcome].inc()
        fields["outcome"] = outcome
        fields["latencyMs"] = round((time.perf_counter() - start) * 1000, 3)
        logs.event(logs.INCREMENTS, "increment", fields)
    app[HUB].note_version(board, result.version)
    return json_response(
        orjson.dumps(
            {
                "userId": result.user_id,
                "score": result.score,
                "rank": result.rank,
                "previousRank": result.previous_rank,
                "delta": result.delta,
                "eventId": result.event_id,
                "topChanged": result.top_changed,
            }
        )
    )


def _etag_matches(request: web.Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


async def top(request: web.Request) -> web.Response:
    """GET /scores/top: the newest board page, from the process cache when possible."""
    board = board_id(request)
    limit = int_param(request, "limit", 10, 1, 100)
    offset = int_param(request, "offset", 0, 0, 10_000)
    if offset + limit <= TOP_SIZE:
        hub = request.app[HUB]
        cached = hub.cached(board) or await hub.top(board)
        # (aiohttp keeps a CIMultiDict it is given: each response gets its own copy.)
        if _etag_matches(request, cached.etag):
            return web.Response(status=304, headers=cached.not_modified_headers.copy())
        return web.Response(body=cached.body(offset, limit), headers=cached.headers.copy())
    version, entries = await request.app[BOARD].page(board, offset, limit)
    snapshot = await request.app[HUB].top(board)
    body = orjson.dumps(
        {
            "entries": [e.as_dict() for e in entries],
            "version": version,
            "updatedAt": snapshot.updated_at(),
        }
    )
    # Deep pages change without the top-100 version moving: tag their content too.
    etag = f'"{version}-{hashlib.blake2s(body, digest_size=6).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(request, etag):
        return web.Response(status=304, headers=headers)
    return json_response(body, headers=headers)


async def user(request: web.Request) -> web.Response:
    """GET /scores/{userId}."""
    board = board_id(request)
    user_id = path_user(request)
    entry = await request.app[BOARD].user(board, user_id)
    if entry is None:
        raise NotFound("this user has no score on this board")
    return json_response(
        orjson.dumps({"userId": entry.user_id, "score": entry.score, "rank": entry.rank})
    )


async def around(request: web.Request) -> web.Response:
    """GET /scores/{userId}/around?n=N."""
    board = board_id(request)
    user_id = path_user(request)
    n = int_param(request, "n", 5, 0, 50)
    entries = await request.app[BOARD].around(board, user_id, n)
    if entries is None:
        raise NotFound("this user has no score on this board")
    return json_response(orjson.dumps({"entries": [e.as_dict() for e in entries]}))


def add_routes(app: web.Application, prefix: str) -> None:
    """The score routes under `prefix` ('' or '/boards/{boardId}')."""
    spec.register(app, "increment", increment, prefix)
    spec.register(app, "top", top, prefix)


def add_user_routes(app: web.Application, prefix: str) -> None:
    """Routes with a `{userId}` segment: registered after the fixed `/scores/…` paths."""
    spec.register(app, "user", user, prefix)
    spec.register(app, "around", around, prefix)
