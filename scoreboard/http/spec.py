"""The API description: every route, once. Route registration and /openapi.json read it.

`OPERATIONS` is the one list of what the service answers: method, path, parameters,
bodies, headers and every status code. `register` adds a handler for one of them (the
method and path come from here, so they cannot drift), and `document` renders the
OpenAPI 3.1 document served at /openapi.json. A test checks that the application's
router and this list agree in both directions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .. import __version__
from ..config import Settings

BOARD_PREFIX = "/boards/{boardId}"
JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


UUID: Schema = {
    "type": "string",
    "format": "uuid",
    "examples": ["0b4e7a1c-3f52-4d8e-9a61-2c7d5e8f9a10"],
}
ENTRY: Schema = {
    "type": "object",
    "required": ["rank", "userId", "score"],
    "properties": {
        "rank": {"type": "integer", "minimum": 1, "description": "competition rank"},
        "userId": UUID,
        "score": {"type": "integer"},
    },
    "additionalProperties": False,
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error response has this body.",
        "required": ["error", "message", "requestId"],
        "properties": {
            "error": {
                "type": "string",
                "description": "Machine-readable code: invalid_token, payload_too_large, "
                "unsupported_media_type, bad_request, invalid_action_token, forbidden, "
                "invalid_delta, replay, rate_limited, not_found, method_not_allowed, "
                "store_unavailable, database_unavailable, too_many_clients, internal_error.",
            },
            "message": {"type": "string", "description": "What went wrong, for people."},
            "requestId": {"type": "string", "description": "The response's X-Request-ID."},
        },
    },
    "Replay": {
        "allOf": [
            ref("Error"),
            {
                "type": "object",
                "properties": {
                    "error": {"const": "replay"},
                    "original": {
                        "type": "object",
                        "description": "The first, successful use of the nonce, while it is "
                        "remembered.",
                        "required": ["eventId", "score", "rank"],
                        "properties": {
                            "eventId": UUID,
                            "score": {"type": "integer"},
                            "rank": {"type": "integer", "minimum": 1},
                        },
                    },
                },
            },
        ]
    },
    "IncrementRequest": {
        "type": "object",
        "required": ["userId", "delta", "actionToken"],
        "properties": {
            "userId": {
                **UUID,
                "description": "Whose score changes: the user JWT's sub, or anyone with "
                "scores:admin.",
            },
            "delta": {
                "type": "integer",
                "description": "Points to add (negative: a penalty, scores:admin only). Never 0.",
            },
            "actionToken": {
                "type": "string",
                "minLength": 1,
                "description": "HS256 JWT from the action server: sub = userId, "
                "delta = delta, nonce = X-Action-Nonce, iat and exp.",
            },
        },
        "additionalProperties": False,
    },
    "IncrementResult": {
        "type": "object",
        "required": ["userId", "score", "rank", "previousRank", "delta", "eventId", "topChanged"],
        "properties": {
            "userId": UUID,
            "score": {"type": "integer"},
            "rank": {"type": "integer", "minimum": 1},
            "previousRank": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "null for the user's first score",
            },
            "delta": {"type": "integer"},
            "eventId": {**UUID, "description": "score_events.id of this change"},
            "topChanged": {"type": "boolean", "description": "the top-10 changed"},
        },
        "additionalProperties": False,
    },
    "Entry": ENTRY,
    "Top": {
        "type": "object",
        "required": ["entries", "version", "updatedAt"],
        "properties": {
            "entries": {"type": "array", "items": ref("Entry"), "maxItems": 100},
            "version": {
                "type": "integer",
                "minimum": 0,
                "description": "grows whenever the top-100 changes; 0 for an empty board",
            },
            "updatedAt": {"type": "string", "format": "date-time"},
        },
        "additionalProperties": False,
    },
    "UserScore": {
        "type": "object",
        "required": ["userId", "score", "rank"],
        "properties": {
            "userId": UUID,
            "score": {"type": "integer"},
            "rank": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": False,
    },
    "Around": {
        "type": "object",
        "required": ["entries"],
        "properties": {"entries": {"type": "array", "items": ref("Entry"), "maxItems": 101}},
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Readiness": {
        "type": "object",
        "required": ["redis", "database"],
        "properties": {
            "redis": {"type": "string", "description": '"ok" or a short error text'},
            "database": {"type": "string", "description": '"ok" or a short error text'},
        },
        "additionalProperties": False,
    },
    "LiveTop": {
        "description": "`event: top` data (SSE) / `type: top` message (WebSocket): the "
        "current top-10 as in GET /scores/top.",
        "allOf": [ref("Top")],
    },
    "LiveScore": {
        "type": "object",
        "description": "`event: score` data / `type: score` message: a change of the "
        "subscribed user.",
        "required": ["userId", "score", "rank", "delta", "eventId"],
        "properties": {
            "userId": UUID,
            "score": {"type": "integer"},
            "rank": {"type": "integer", "minimum": 1},
            "delta": {"type": "integer"},
            "eventId": UUID,
        },
    },
}

HEADERS: dict[str, Schema] = {
    "X-Request-ID": {
        "description": "The client's X-Request-ID when it sent one sane value (1-128 visible "
        "ASCII characters), otherwise a generated one. On every response.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 128},
        "required": True,
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
        "required": True,
    },
    "ETag": {
        "description": 'The top\'s version, quoted: "<version>" (deep pages: '
        '"<version>-<content hash>").',
        "schema": {"type": "string"},
        "required": True,
    },
    "WWW-Authenticate": {
        "description": 'Bearer error="invalid_token"',
        "schema": {"type": "string"},
        "required": True,
    },
}

PARAMETERS: dict[str, Schema] = {
    "boardId": {
        "name": "boardId",
        "in": "path",
        "required": True,
        "description": "Any board other than `global` (seasons, regions); a board exists "
        "once it has a score.",
        "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
    },
    "userId": {
        "name": "userId",
        "in": "path",
        "required": True,
        "schema": UUID,
    },
    "X-Request-ID": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Echoed on the response when it is 1-128 visible ASCII characters; "
        "any other value is replaced by a generated id (never refused).",
        "schema": {"type": "string"},
    },
}

# Why each status happens, by status; an operation lists the statuses it can answer.
ERRORS: dict[int, str] = {
    400: "bad_request: a malformed parameter, header or body",
    401: "invalid_token: the user JWT is missing, malformed, badly signed, expired, or has "
    "the wrong iss/aud; more than one Authorization header",
    403: "invalid_action_token (signature, expiry, lifetime, sub/nonce/delta mismatch) or "
    "forbidden (another user, bonus or penalty without the scope)",
    404: "not_found",
    409: "replay: the nonce was already consumed",
    413: "payload_too_large: the body is over 16 KiB",
    415: "unsupported_media_type: Content-Type is not application/json (UTF-8)",
    422: "invalid_delta: zero, over the configured maximum, or the score would leave ±(2^53-1)",
    429: "rate_limited: this user's increments for the current minute are used up; the nonce "
    "was not consumed, so the same request may be retried after Retry-After",
    500: "store_unavailable: Redis, the live store, is unreachable or failing",
    503: "too_many_clients: the live client limit (per process or per address) is reached",
}


@dataclass(frozen=True, slots=True)
class Body:
    """One response (or request) body: media type, schema and a description."""

    description: str
    media: str = JSON
    schema: Schema | None = None
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: where it lives, what it takes and everything it can answer."""

    id: str
    method: str
    path: str
    summary: str
    tag: str
    description: str = ""
    boards: bool = False  # also under /boards/{boardId}/…
    auth: bool = False  # needs a user JWT
    params: tuple[Schema, ...] = ()
    body: Schema | None = None
    responses: Mapping[int, Body] = field(default_factory=dict)
    errors: tuple[int, ...] = ()

    def paths(self) -> tuple[str, ...]:
        """Every path of the operation: the global board's, then the per-board one."""
        return (self.path, BOARD_PREFIX + self.path) if self.boards else (self.path,)


def query(name: str, low: int, high: int, default: int, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": low, "maximum": high, "default": default},
    }


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


STREAM_USER = {
    "name": "userId",
    "in": "query",
    "required": False,
    "description": "Also send this user's own changes (`score` events).",
    "schema": UUID,
}

OPERATIONS: tuple[Op, ...] = (
    Op(
        id="increment",
        method="POST",
        path="/scores/increment",
        summary="Apply one action's points",
        tag="scores",
        boards=True,
        auth=True,
        description="Checks, in this order (the first failure answers): user JWT (401), "
        "body size (413), Content-Type (415), body and nonce header shape (400), action "
        "token (403 invalid_action_token), scopes (403 forbidden), delta bounds (422), "
        "nonce already used (409), rate limit (429). A refused request changes nothing. "
        "The nonce, the score change, the event and the publish are one atomic step.",
        params=(
            {
                "name": "X-Action-Nonce",
                "in": "header",
                "required": True,
                "description": "The action token's nonce claim; consumed at most once.",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,128}$"},
            },
        ),
        body=ref("IncrementRequest"),
        responses={
            200: Body("Applied", schema=ref("IncrementResult")),
            409: Body(ERRORS[409], schema=ref("Replay")),
            429: Body(ERRORS[429], schema=ref("Error"), headers=("Retry-After",)),
        },
        errors=(400, 401, 403, 404, 413, 415, 422, 500),
    ),
    Op(
        id="top",
        method="GET",
        path="/scores/top",
        summary="A page of the board",
        tag="scores",
        boards=True,
        description="Score descending, ties by userId ascending. Public. Pages inside the "
        "top-100 come from a per-process cache kept current by the update channel.",
        params=(
            query("limit", 1, 100, 10, "entries per page"),
            query("offset", 0, 10_000, 0, "entries to skip"),
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "An ETag from an earlier answer: 304 while it is current.",
                "schema": {"type": "string"},
            },
        ),
        responses={
            200: Body("The page", schema=ref("Top"), headers=("ETag",)),
            304: Body("Not modified: the ETag is current", media="", headers=("ETag",)),
        },
        errors=(400, 404, 500),
    ),
    Op(
        id="stream",
        method="GET",
        path="/scores/stream",
        summary="Live top-10 as Server-Sent Events",
        tag="live",
        boards=True,
        description="On connect `retry: 2000`, then at once `event: top` (data: the top-10 as "
        "in GET /scores/top, `id:` its version); after that an `event: top` whenever the "
        "top-10 changes (coalesced: a slow client gets the newest state), `: ping` at least "
        "every 15 s, and with `userId` also `event: score` for that user's changes. A "
        "reconnect (Last-Event-ID) gets the current snapshot at once. The stream does not end.",
        params=(STREAM_USER,),
        responses={
            200: Body(
                "An endless event stream; event data: LiveTop, LiveScore",
                media="text/event-stream",
                schema={"type": "string"},
            ),
            503: Body(ERRORS[503], schema=ref("Error"), headers=("Retry-After",)),
        },
        errors=(400, 404, 500),
    ),
    Op(
        id="ws",
        method="GET",
        path="/scores/ws",
        summary="Live top-10 over a WebSocket",
        tag="live",
        boards=True,
        description='The stream\'s events as JSON text messages `{"type": "top" | "score", …}` '
        '(LiveTop, LiveScore); the client may send `{"subscribe": "<uuid>"}` (or null) to '
        "follow one user's changes. Needs a WebSocket upgrade.",
        params=(STREAM_USER,),
        responses={
            101: Body("Switching to the WebSocket protocol", media=""),
            503: Body(ERRORS[503], schema=ref("Error"), headers=("Retry-After",)),
        },
        errors=(400, 404, 500),
    ),
    Op(
        id="user",
        method="GET",
        path="/scores/{userId}",
        summary="One user's score and rank",
        tag="scores",
        boards=True,
        params=(_param("userId"),),
        responses={200: Body("The user's entry", schema=ref("UserScore"))},
        errors=(400, 404, 500),
    ),
    Op(
        id="erase",
        method="DELETE",
        path="/scores/{userId}",
        summary="Erase a user (scores:admin)",
        tag="scores",
        boards=True,
        auth=True,
        description="Removes the user from the live board and from user_scores, and "
        "anonymises their score_events (the deltas stay, the identity goes). Watchers see "
        "the user leave the top-10 at once.",
        params=(_param("userId"),),
        responses={204: Body("Erased", media="")},
        errors=(400, 401, 403, 404, 500),
    ),
    Op(
        id="around",
        method="GET",
        path="/scores/{userId}/around",
        summary="A user's entry with its neighbours",
        tag="scores",
        boards=True,
        params=(
            _param("userId"),
            query("n", 0, 50, 5, "entries above and below the user"),
        ),
        responses={200: Body("Entries in board order", schema=ref("Around"))},
        errors=(400, 404, 500),
    ),
    Op(
        id="page",
        method="GET",
        path="/",
        summary="The live leaderboard page",
        tag="live",
        description="For browsers: follows /scores/stream, polls /scores/top when it cannot.",
        responses={200: Body("An HTML page", media="text/html", schema={"type": "string"})},
    ),
    Op(
        id="static",
        method="GET",
        path="/static/{name}",
        summary="The live page's stylesheet and script",
        tag="live",
        params=({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},),
        responses={
            200: Body("The file", media="*/*", schema={"type": "string"}),
        },
        errors=(404,),
    ),
    Op(
        id="metrics",
        method="GET",
        path="/metrics",
        summary="Prometheus metrics",
        tag="operations",
        description="scoreboard_score_updates_total{outcome}, "
        "scoreboard_auth_failures_total{reason}, scoreboard_cache_requests_total{result}, "
        "scoreboard_stream_clients{transport}, "
        "scoreboard_http_request_duration_seconds{route,method,status}, "
        "scoreboard_sink_events_total, scoreboard_sink_lag_events, and the process's own.",
        responses={
            200: Body("Text exposition format", media="text/plain", schema={"type": "string"})
        },
    ),
    Op(
        id="healthz",
        method="GET",
        path="/healthz",
        summary="Liveness: the process answers",
        tag="operations",
        responses={200: Body("Alive", schema=ref("Health"))},
    ),
    Op(
        id="readyz",
        method="GET",
        path="/readyz",
        summary="Readiness: Redis and the database answer",
        tag="operations",
        responses={
            200: Body("Both answer", schema=ref("Readiness")),
            503: Body(
                "One does not: its value is a short error text instead of ok",
                schema=ref("Readiness"),
            ),
        },
    ),
    Op(
        id="openapi",
        method="GET",
        path="/openapi.json",
        summary="This document",
        tag="operations",
        responses={200: Body("OpenAPI 3.1", schema={"type": "object"})},
    ),
    Op(
        id="docs",
        method="GET",
        path="/docs",
        summary="This document, rendered for people",
        tag="operations",
        responses={200: Body("An HTML page", media="text/html", schema={"type": "string"})},
    ),
)

BY_ID: dict[str, Op] = {op.id: op for op in OPERATIONS}


def register(app: web.Application, op_id: str, handler: Handler, prefix: str = "") -> None:
    """Route `handler` at the described operation's method and path (under `prefix`)."""
    op = BY_ID[op_id]
    if prefix and not op.boards:
        raise ValueError(f"{op_id} has no per-board route")
    if op.method == "GET":
        app.router.add_get(prefix + op.path, handler)
    else:
        app.router.add_route(op.method, prefix + op.path, handler)


def routes() -> set[tuple[str, str]]:
    """Every (method, path) described."""
    return {(op.method, path) for op in OPERATIONS for path in op.paths()}


def _response(status: int, body: Body) -> Schema:
    headers: dict[str, Schema] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    for name in body.headers:
        headers[name] = {"$ref": f"#/components/headers/{name}"}
    out: Schema = {"description": body.description, "headers": headers}
    if body.media:
        out["content"] = {body.media: {"schema": body.schema or {}}}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    return out


def _operation(op: Op, path: str, settings: Settings) -> Schema:
    board = path.startswith(BOARD_PREFIX)
    params = ([_param("boardId")] if board else []) + list(op.params) + [_param("X-Request-ID")]
    responses = {str(s): _response(s, b) for s, b in sorted(op.responses.items())}
    for status in op.errors:
        if status == 404 and board is False and "{" not in path:
            continue  # only a path with parameters can miss
        responses.setdefault(
            str(status), _response(status, Body(ERRORS[status], schema=ref("Error")))
        )
    description = op.description
    if op.id == "increment":
        limit = settings.rate_limit_per_min
        description += f" Rate limit here: {limit or 'none'} increments per user per minute."
    out: Schema = {
        "operationId": op.id + ("Board" if board else ""),
        "summary": op.summary + (" (any board)" if board else ""),
        "tags": [op.tag],
        "parameters": params,
        "responses": dict(sorted(responses.items())),
    }
    if description:
        out["description"] = description
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": op.body}}}
    out["security"] = [{"bearer": []}] if op.auth else []
    return out


def _schemas(settings: Settings) -> dict[str, Schema]:
    """The component schemas, with this server's delta bounds."""
    schemas = copy.deepcopy(SCHEMAS)
    limit = max(settings.max_delta, settings.max_bonus_delta)
    delta = schemas["IncrementRequest"]["properties"]["delta"]
    delta.update(minimum=-limit, maximum=limit, **{"not": {"const": 0}})
    delta["description"] += (
        f" At most {settings.max_delta} in size for an ordinary action and "
        f"{settings.max_bonus_delta} for a bonus one (422 otherwise)."
    )
    return schemas


def document(settings: Settings) -> Schema:
    """The OpenAPI 3.1 document of every described operation."""
    paths: dict[str, Schema] = {}
    for op in OPERATIONS:
        for path in op.paths():
            paths.setdefault(path, {})[op.method.lower()] = _operation(op, path, settings)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Scoreboard",
            "version": __version__,
            "description": "A live leaderboard: authenticated atomic increments, reads, live "
            "updates. Every body is JSON (UTF-8); every response carries X-Request-ID; every "
            "error body is `Error`. The routes under /scores act on the board `global`; the "
            "same routes under /boards/{boardId} act on any other board.",
        },
        "tags": [
            {"name": "scores", "description": "Increments and reads"},
            {"name": "live", "description": "Server-Sent Events, WebSocket and the page"},
            {"name": "operations", "description": "Metrics, health, this description"},
        ],
        "paths": dict(sorted(paths.items(), key=lambda kv: _path_order(kv[0]))),
        "components": {
            "schemas": _schemas(settings),
            "headers": HEADERS,
            "parameters": PARAMETERS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A user JWT: sub (the user's UUID) and exp required; "
                    "scope may hold scores:bonus and scores:admin.",
                }
            },
        },
    }


def _path_order(path: str) -> tuple[int, str]:
    return (1 if path.startswith(BOARD_PREFIX) else 0, path)
