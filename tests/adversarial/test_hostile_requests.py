"""Hostile requests from a table: each gets its 4xx and the contract's error body, and
leaves every score, nonce and event as it was (in Redis, and in PostgreSQL behind a
running sink).

Requests go over a raw socket, byte for byte as written here: no client library
normalises a path, refuses a CR/LF in a header or fixes a length on the way.

Rows named "http: …" are refused by the HTTP/1.1 parser before any route or middleware
runs (a CR or LF inside a header value, NUL bytes in the request line, headers or
request line beyond the limits, contradictory framing): they too get `400` and the
contract's `bad_request` body with its `X-Request-ID`, and the connection is closed
(scoreboard/http/runner.py). The app is served here as the processes serve it, through
that runner.

Rows with `stream` set open `/scores/stream` with a hostile `Last-Event-ID` (garbage,
100 KiB): the documented answer is the stream itself, opening with `retry` and the
current snapshot, since the header's value is never parsed.
"""

from __future__ import annotations

import gzip
import re
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from scoreboard.config import Settings
from scoreboard.http.app import create_app
from scoreboard.http.runner import Runner
from scoreboard.http.state import SINK

from ..conftest import Tokens, new_user, settings_with
from ..durable import pg_store
from ..helpers import error_body_ok
from .support import (
    Header,
    Reply,
    chunked,
    db_state,
    exchange,
    first_event,
    live_state,
    raw_request,
)

JSON = "application/json"


@dataclass(frozen=True)
class Row:
    """One hostile request and the answer it must get."""

    name: str
    raw: bytes
    status: int
    code: str | None  # None: only the status is checked
    stream: bool = False  # 200 expected is the live stream: its first event is checked
    parser: bool = False  # refused by the HTTP parser, before any route


@dataclass
class Ctx:
    tokens: Tokens
    victim: str  # a user with a score, whose own JWT the attacker holds
    board: str  # a second board with a score

    def jwt(self, sub: str | None = None, scope: str = "") -> str:
        return self.tokens.user(sub or self.victim, scope)

    def valid(
        self, delta: int = 5, user: str | None = None, action: str = "score"
    ) -> tuple[list[Header], dict[str, Any]]:
        """Headers and body of a request that would succeed: each row breaks one thing."""
        user = user or self.victim
        nonce, token = self.tokens.action(user, delta, action=action)
        headers: list[Header] = [
            ("Authorization", f"Bearer {self.jwt()}"),
            ("X-Action-Nonce", nonce),
            ("Content-Type", JSON),
        ]
        return headers, {"userId": user, "delta": delta, "actionToken": token}


def _dump(value: Any) -> bytes:
    return orjson.dumps(value)


def _replace(headers: list[Header], name: str, value: str | bytes | None) -> list[Header]:
    out = [(k, v) for k, v in headers if str(k).lower() != name.lower()]
    return out if value is None else [*out, (name, value)]


def _post(headers: list[Header], body: bytes, path: str = "/scores/increment") -> bytes:
    return raw_request("POST", path, headers, body)


def body_rows(c: Ctx) -> list[Row]:
    """Malformed bodies under otherwise valid headers."""
    rows: list[Row] = []

    def bad(name: str, make: Callable[[dict[str, Any]], bytes], status: int = 400) -> None:
        headers, body = c.valid()
        code = {400: "bad_request", 403: "invalid_action_token", 413: "payload_too_large"}[status]
        rows.append(Row(f"body: {name}", _post(headers, make(body)), status, code))

    def swap(field: str, literal: bytes) -> Callable[[dict[str, Any]], bytes]:
        def make(body: dict[str, Any]) -> bytes:
            marker = b'"@@"'
            return _dump({**body, field: "@@"}).replace(marker, literal)

        return make

    def const(raw: bytes) -> Callable[[dict[str, Any]], bytes]:
        return lambda _: raw

    bad("empty", lambda b: b"")
    bad("whitespace only", lambda b: b" \r\n\t ")
    for literal in (b"null", b"[]", b'"a string"', b"123", b"true"):
        bad(f"top-level {literal.decode()}", const(literal))
    bad("empty object", lambda b: b"{}")
    bad("missing actionToken", lambda b: _dump({k: v for k, v in b.items() if k != "actionToken"}))
    bad("unknown field", lambda b: _dump({**b, "score": 1_000_000}))
    bad("look-alike key (Greek Iota)", lambda b: _dump({("user\u0399d" if k == "userId" else k): v for k, v in b.items()}))  # fmt: skip
    bad("userId with Cyrillic a", lambda b: _dump({**b, "userId": b["userId"][:-1] + "\u0430"}))
    bad("userId in fullwidth digits", lambda b: _dump({**b, "userId": b["userId"].translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})}))  # fmt: skip
    bad("userId with escaped NUL", lambda b: _dump({**b, "userId": b["userId"] + "\u0000"}))
    bad("userId with trailing newline", lambda b: _dump({**b, "userId": b["userId"] + "\n"}))
    bad("userId urn form", lambda b: _dump({**b, "userId": "urn:uuid:" + b["userId"]}))
    bad("userId 15000 chars", lambda b: _dump({**b, "userId": "a" * 15000}))
    bad("userId a number", lambda b: _dump({**b, "userId": 7}))
    bad("userId a lone surrogate", swap("userId", b'"\\ud800"'))
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"5.0", b"5e0", b"true", b'"5"', b"null", b"[5]", b"{}", b"0x5", b"+5", b"05"):  # fmt: skip
        bad(f"delta {literal.decode()}", swap("delta", literal))
    bad("delta 10**30 (beyond 64 bits)", swap("delta", b"1" + b"0" * 30))
    bad("duplicate delta keys, last one differs", lambda b: _dump(b)[:-1] + b',"delta":1000}', 403)
    bad("actionToken empty", lambda b: _dump({**b, "actionToken": ""}))
    bad("actionToken an object", lambda b: _dump({**b, "actionToken": {"alg": "none"}}))
    bad("actionToken 15000 chars", lambda b: _dump({**b, "actionToken": "e" * 15000}), 403)
    bad("invalid UTF-8 in a key", lambda b: _dump(b).replace(b'{"userId"', b'{"user\xc3\x28Id"'))
    bad("UTF-16 encoded", lambda b: _dump(b).decode().encode("utf-16-le"))
    bad("UTF-8 byte order mark", lambda b: b"\xef\xbb\xbf" + _dump(b))
    bad("raw NUL byte", lambda b: _dump(b)[:-1] + b"\x00}")
    bad("trailing garbage", lambda b: _dump(b) + b" x")
    bad("two objects", lambda b: _dump(b) + _dump(b))
    bad("single quotes", lambda b: _dump(b).replace(b'"', b"'"))
    bad("trailing comma", lambda b: _dump(b)[:-1] + b",}")
    bad("comment", lambda b: b"/* hi */" + _dump(b))
    bad("nested 7000 deep in userId", swap("userId", b"[" * 7000 + b"]" * 7000))
    bad("objects nested 1500 deep", lambda b: b'{"a":' * 1500 + b"1" + b"}" * 1500)
    bad("16 KiB + 1", lambda b: _dump(b)[:-1] + b" " * (16 * 1024 + 1 - len(_dump(b))) + b"}", 413)  # fmt: skip
    bad("1 MiB", lambda b: _dump({**b, "pad": "x" * (1 << 20)}), 413)
    return rows


def framing_rows(c: Ctx) -> list[Row]:
    """Bodies framed or encoded in hostile ways."""
    rows: list[Row] = []
    headers, body = c.valid()
    big = _dump({**body, "pad": "x" * 20000})
    rows.append(Row("chunked 20 KiB body", raw_request("POST", "/scores/increment", [*headers, ("Transfer-Encoding", "chunked")], chunked(big), length=False), 413, "payload_too_large"))  # fmt: skip
    headers, body = c.valid()
    bomb = gzip.compress(_dump(body)[:-1] + b" " * (10 << 20) + b"}")
    rows.append(Row("gzip bomb: 10 MiB inflated from ~10 KiB", _post([*headers, ("Content-Encoding", "gzip")], bomb), 413, "payload_too_large"))  # fmt: skip
    headers, body = c.valid()
    rows.append(Row("Content-Encoding gzip, body not gzip", _post([*headers, ("Content-Encoding", "gzip")], _dump(body)), 400, "bad_request"))  # fmt: skip
    headers, body = c.valid()
    # A compressed stream cut short is found by the parser at the end of the body.
    rows.append(Row("Content-Encoding deflate, truncated stream", _post([*headers, ("Content-Encoding", "deflate")], zlib.compress(_dump(body))[:-6]), 400, "bad_request"))  # fmt: skip
    headers, body = c.valid()
    rows.append(Row("Content-Encoding unknown (passed through)", _post([*headers, ("Content-Encoding", "x-evil")], b"\x00\xff" + _dump(body)), 400, "bad_request"))  # fmt: skip
    return rows


def header_rows(c: Ctx) -> list[Row]:
    rows: list[Row] = []

    def with_header(
        name: str, value: str | bytes | None, status: int, code: str, label: str = ""
    ) -> None:
        headers, body = c.valid()
        shown = label or (f"{name}: {value!r}"[:60] if value is not None else f"no {name}")
        rows.append(Row(f"header: {shown}", _post(_replace(headers, name, value), _dump(body)), status, code))  # fmt: skip

    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json", "application/jsonp", "application/json; charset=latin-1", "application/json; charset=utf-16", "application/json-seq"):  # fmt: skip
        with_header("Content-Type", ctype, 415, "unsupported_media_type")
    with_header("Content-Type", None, 415, "unsupported_media_type")
    with_header("Content-Type", "applicat\u0456on/json".encode(), 415, "unsupported_media_type", "Content-Type with a Cyrillic i")  # fmt: skip
    with_header("Authorization", None, 401, "invalid_token")
    with_header("Authorization", f"Basic {c.jwt()}", 401, "invalid_token")
    with_header("Authorization", "Bearer", 401, "invalid_token")
    with_header(
        "Authorization", "Bearer " + "e" * 12000, 401, "invalid_token", "Bearer + 12000 chars"
    )
    with_header("Authorization", b"Bearer \xe9\xe9.\xe9.\xe9", 401, "invalid_token", "Bearer non-ASCII bytes")  # fmt: skip
    with_header("Authorization", f"Bearer {c.jwt()}\u200b".encode(), 401, "invalid_token", "Bearer + zero-width space")  # fmt: skip
    with_header("X-Action-Nonce", None, 400, "bad_request")
    with_header("X-Action-Nonce", "x" * 15, 400, "bad_request")
    with_header("X-Action-Nonce", "x" * 129, 400, "bad_request")
    with_header("X-Action-Nonce", "../../../etc/passwd", 400, "bad_request")
    with_header("X-Action-Nonce", "a' OR '1'='1' --aa", 400, "bad_request")
    with_header("X-Action-Nonce", "nonce-with-\u0430-cyrillic-a".encode(), 400, "bad_request", "nonce with a Cyrillic a")  # fmt: skip
    with_header("X-Action-Nonce", "fresh-nonce-" + secrets.token_hex(8), 403, "invalid_action_token", "a nonce other than the token's")  # fmt: skip
    headers, body = c.valid()
    rows.append(Row("header: two Authorization", _post([*headers, ("Authorization", f"Bearer {c.jwt()}")], _dump(body)), 401, "invalid_token"))  # fmt: skip
    headers, body = c.valid()
    nonce = next(v for k, v in headers if k == "X-Action-Nonce")
    rows.append(Row("header: two X-Action-Nonce", _post([*headers, ("X-Action-Nonce", nonce)], _dump(body)), 400, "bad_request"))  # fmt: skip
    return rows


def parser_rows(c: Ctx) -> list[Row]:
    """Requests that are not well-formed HTTP/1.1; the parser refuses them."""
    rows: list[Row] = []

    def broken(name: str, make: Callable[[list[Header], bytes], bytes]) -> None:
        headers, body = c.valid()
        rows.append(Row(f"http: {name}", make(headers, _dump(body)), 400, "bad_request", parser=True))  # fmt: skip

    broken("CR/LF injection in Authorization", lambda h, b: _post(_replace(h, "Authorization", f"Bearer {c.jwt()}\r\nX-Injected: 1"), b).replace(b"\r\nX-Injected", b"\rX-Injected"))  # fmt: skip
    broken("bare LF inside X-Action-Nonce", lambda h, b: _post([*_replace(h, "X-Action-Nonce", None), ("X-Action-Nonce", b"aaaaaaaaaaaaaaaaaaaa\nX-Evil: 1")], b))  # fmt: skip
    broken("NUL in X-Action-Nonce", lambda h, b: _post([*_replace(h, "X-Action-Nonce", None), ("X-Action-Nonce", b"aaaaaaaa\x00aaaaaaaaaaaa")], b))  # fmt: skip
    broken("NUL in the path", lambda h, b: _post(h, b, "/boards/glob\x00al/scores/increment"))
    broken("raw UTF-8 look-alike in the path", lambda h, b: _post(h, b, "/boards/gl\u043ebal/scores/increment"))  # fmt: skip
    broken("space in the path", lambda h, b: _post(h, b, "/boards/a b/scores/increment"))
    broken("200 KiB header (past the 128 KiB the parser takes)", lambda h, b: _post([*h, ("X-Padding", "p" * 204800)], b))  # fmt: skip
    broken("300 headers", lambda h, b: _post([*h, *((f"X-H{i}", "1") for i in range(300))], b))
    broken("100 KiB request line", lambda h, b: _post(h, b, "/scores/increment?" + "q" * 102400))
    broken("Content-Length and Transfer-Encoding", lambda h, b: raw_request("POST", "/scores/increment", [*h, ("Content-Length", str(len(b))), ("Transfer-Encoding", "chunked")], chunked(b), length=False))  # fmt: skip
    broken("two different Content-Length", lambda h, b: raw_request("POST", "/scores/increment", [*h, ("Content-Length", str(len(b))), ("Content-Length", str(len(b) + 1))], b, length=False))  # fmt: skip
    broken("negative Content-Length", lambda h, b: raw_request("POST", "/scores/increment", [*h, ("Content-Length", "-1")], b, length=False))  # fmt: skip
    broken("obsolete header folding", lambda h, b: _post(h, b).replace(b"\r\nContent-Type: ", b"\r\nX-Fold: a\r\n Content-Type: "))  # fmt: skip
    broken("space before a header colon", lambda h, b: _post(h, b).replace(b"Content-Type:", b"Content-Type :"))  # fmt: skip
    broken("unknown Transfer-Encoding", lambda h, b: raw_request("POST", "/scores/increment", [*h, ("Transfer-Encoding", "gzip, identity")], b, length=False))  # fmt: skip
    broken("invalid method token", lambda h, b: _post(h, b).replace(b"POST ", b"PO\x01T ", 1))
    broken("HTTP/9.9", lambda h, b: _post(h, b).replace(b"HTTP/1.1", b"HTTP/9.9", 1))
    return rows


def path_rows(c: Ctx) -> list[Row]:
    """Paths, boards, methods and query strings."""
    rows: list[Row] = []

    def post_to(name: str, path: str, status: int, code: str) -> None:
        h, b = c.valid()
        rows.append(Row(f"path: POST {name}", _post(h, _dump(b), path), status, code))

    for board in ("..", "%2e%2e", "a%2Fb", "%00", "GLOBAL", "x" * 65, "gl%D0%BEbal", "global%0a", "global%20", "%2e%2e%2f%2e%2e%2fetc"):  # fmt: skip
        post_to(f"/boards/{board[:20]}/scores/increment", f"/boards/{board}/scores/increment", 400, "bad_request")  # fmt: skip
    post_to("/boards//scores/increment", "/boards//scores/increment", 404, "not_found")
    post_to("/scores/increment/ (trailing slash)", "/scores/increment/", 404, "not_found")
    post_to("/scores/../scores/increment", "/scores/../scores/increment", 404, "not_found")

    def call(method: str, path: str, status: int, code: str, extra: list[Header] | None = None) -> None:  # fmt: skip
        rows.append(Row(f"method: {method} {path[:50]}", raw_request(method, path, extra or []), status, code))  # fmt: skip

    auth: list[Header] = [("Authorization", f"Bearer {c.jwt()}")]
    admin: list[Header] = [("Authorization", f"Bearer {c.jwt(new_user(), 'scores:admin')}")]
    for method in ("PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND"):
        call(method, "/scores/increment", 405, "method_not_allowed", auth)
    call("GET", "/scores/increment", 400, "bad_request")  # /scores/{userId} with userId "increment"
    call("POST", "/scores/top", 405, "method_not_allowed", auth)
    call("POST", f"/scores/{c.victim}", 405, "method_not_allowed", auth)
    call("DELETE", f"/scores/{c.victim}", 401, "invalid_token")
    call("DELETE", f"/scores/{c.victim}", 403, "forbidden", auth)
    call("DELETE", "/scores/..%2f..%2fetc%2fpasswd", 400, "bad_request", admin)
    call("DELETE", f"/boards/../scores/{c.victim}", 400, "bad_request", admin)
    call("DELETE", f"/boards/{c.board}%00/scores/{c.victim}", 400, "bad_request", admin)
    call("GET", f"/scores/{c.victim}%00", 400, "bad_request")
    call("GET", f"/scores/{c.victim[:-1]}%D0%B0", 400, "bad_request")  # a Cyrillic a at the end
    call("GET", "/scores/..%2f..%2fetc%2fpasswd", 400, "bad_request")
    call("GET", "/boards/../../etc/passwd/scores/top", 404, "not_found")
    for query in ("limit=0", "limit=101", "limit=-1", "limit=1e1", "limit=%EF%BC%91%EF%BC%90", "limit=10&limit=10", "offset=10001", "offset=" + "9" * 30, "limit=%00", "limit="):  # fmt: skip
        call("GET", f"/scores/top?{query}", 400, "bad_request")
    for query in ("n=51", "n=-1", "n=five"):
        call("GET", f"/scores/{c.victim}/around?{query}", 400, "bad_request")
    return rows


def request_id_rows(c: Ctx) -> list[Row]:
    """Hostile X-Request-ID values: never echoed, a generated id instead."""
    rows = []
    for value in ("r" * 129, "id with spaces", "\u0456d-cyrillic".encode()):
        h, b = c.valid()
        h = [*_replace(h, "Authorization", None), ("X-Request-ID", value)]
        rows.append(Row(f"header: X-Request-ID {value!r}"[:60], _post(h, _dump(b)), 401, "invalid_token"))  # fmt: skip
    return rows


def stream_rows(c: Ctx) -> list[Row]:
    """The live routes: hostile Last-Event-ID values get the current snapshot (documented);
    hostile parameters get 400."""
    rows: list[Row] = []
    for name, value in (
        ("garbage", b"'; DROP TABLE score_events; --"),
        ("negative", b"-1"),
        ("30 digits", b"9" * 30),
        ("a future version", b"999999"),
        ("non-ASCII bytes", "\u00e9\u0430\u200b".encode()),
        ("JSON", b'{"version": 1}'),
        ("100 KiB", b"7" * 102400),
    ):
        raw = raw_request("GET", "/scores/stream", [("Last-Event-ID", value)])
        rows.append(Row(f"stream: Last-Event-ID {name}", raw, 200, None, stream=True))
    raw = raw_request("GET", f"/scores/stream?userId={c.victim}", [("Last-Event-ID", "x" * 102400)])
    rows.append(Row("stream: userId and a 100 KiB Last-Event-ID", raw, 200, None, stream=True))
    for query in ("userId=alice", f"userId={c.victim}&userId={c.victim}", f"userId={c.victim}%00", "userId="):  # fmt: skip
        rows.append(Row(f"stream: ?{query[:40]}", raw_request("GET", f"/scores/stream?{query}", []), 400, "bad_request"))  # fmt: skip
    rows.append(Row("stream: /boards/../scores/stream", raw_request("GET", "/boards/../scores/stream", []), 400, "bad_request"))  # fmt: skip
    rows.append(Row("stream: POST", raw_request("POST", "/scores/stream", [], b"{}"), 405, "method_not_allowed"))  # fmt: skip
    rows.append(Row("ws: no upgrade", raw_request("GET", "/scores/ws", []), 400, "bad_request"))
    rows.append(Row("ws: ?userId=alice", raw_request("GET", "/scores/ws?userId=alice", []), 400, "bad_request"))  # fmt: skip
    return rows


def all_rows(c: Ctx) -> list[Row]:
    return [
        *body_rows(c),
        *framing_rows(c),
        *header_rows(c),
        *parser_rows(c),
        *path_rows(c),
        *request_id_rows(c),
        *stream_rows(c),
    ]


def check_reply(row: Row, reply: Reply, top: dict[str, Any]) -> str | None:
    """What is wrong with the answer to `row`, or None (`top`: the board's current top)."""
    if reply.status != row.status:
        return f"status {reply.status} (want {row.status}): {reply.body[:200]!r}"
    if row.stream:
        return check_stream(reply, top)
    if row.code is None:
        return None
    data = reply.json()
    if not error_body_ok(data, row.code):
        return f"body {reply.body[:200]!r} is not the contract's {row.code!r} error"
    if reply.header("content-type") != "application/json; charset=utf-8":
        return f"content type {reply.header('content-type')!r}"
    rid = reply.header("x-request-id")
    if rid != data["requestId"]:
        return f"X-Request-ID {rid!r} differs from the body's {data['requestId']!r}"
    if row.status == 401 and reply.header("www-authenticate") != 'Bearer error="invalid_token"':
        return "401 without WWW-Authenticate"
    return None


def check_stream(reply: Reply, top: dict[str, Any]) -> str | None:
    """The stream opens with `retry` and the current snapshot, whatever Last-Event-ID said."""
    if not (reply.header("content-type") or "").startswith("text/event-stream"):
        return f"content type {reply.header('content-type')!r}"
    text = reply.body.decode("utf-8", "replace")
    event = next((b for b in text.split("\n\n") if "event: top" in b.splitlines()), None)
    if "retry: 2000" not in text or event is None:
        return f"no retry and first top event in {text[:300]!r}"
    fields = dict(line.split(": ", 1) for line in event.splitlines() if ": " in line)
    data = orjson.loads(fields.get("data", "null"))
    if fields.get("id") != str(top["version"]) or data["entries"] != top["entries"][:10]:
        return f"first event {event[:300]!r} is not the current top {top}"
    return None


def label_problems(app: web.Application, metrics: Reply) -> list[str]:
    """Hostile paths must not become metric labels: routes are the router's templates."""
    routes = {r.canonical for r in app.router.resources()} | {"unmatched"}
    seen = set(re.findall(r'scoreboard_http_request_duration_seconds_count\{[^}]*route="([^"]*)"', metrics.body.decode()))  # fmt: skip
    if "/scores/increment" not in seen:
        return ["no request timings in /metrics: the label check saw nothing"]
    return [f"metric label route={r!r}" for r in sorted(seen - routes)]


async def test_hostile_requests(settings: Settings, pg_url: str, redis_url: str) -> None:
    db = await pg_store(pg_url)  # migrate: the in-process sink writes into this database
    await db.close()
    app = create_app(settings_with(settings, database_url=pg_url, sink=True))
    tokens = Tokens(settings)
    runner = Runner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = "127.0.0.1", runner.addresses[0][1]
    try:
        c = Ctx(tokens, new_user(), f"h-{secrets.token_hex(4)}")
        # Something to lose: scores on two boards, consumed nonces, committed events.
        for user, path in ((c.victim, ""), (new_user(), ""), (c.victim, f"/boards/{c.board}")):
            h, b = c.valid(7, user)
            if user != c.victim:
                h = _replace(h, "Authorization", f"Bearer {c.jwt(user)}")
            reply = await exchange(host, port, _post(h, _dump(b), f"{path}/scores/increment"))
            assert reply.status == 200, reply.body
        sink = app[SINK]
        assert await sink.drain(10)
        committed = sink.committed
        before_live, before_db = await live_state(redis_url), db_state(pg_url)
        assert len(before_db["score_events"]) == 3

        top = (await exchange(host, port, raw_request("GET", "/scores/top", []))).json()
        rows = all_rows(c)
        problems: list[str] = []
        server_errors = changes = 0
        started = time.monotonic()
        for row in rows:
            reply = await (first_event if row.stream else exchange)(host, port, row.raw)
            if reply.status >= 500 or reply.status == 0:
                server_errors += 1
            if (problem := check_reply(row, reply, top)) is not None:
                problems.append(f"{row.name}: {problem}")
            if await live_state(redis_url) != before_live:
                changes += 1
                problems.append(f"{row.name}: changed Redis")
                before_live = await live_state(redis_url)
        assert await sink.drain(10)
        if db_state(pg_url) != before_db:
            changes += 1
            problems.append("PostgreSQL changed")
        if sink.committed != committed:
            problems.append(f"the sink committed {sink.committed - committed} more entries")
        elapsed = time.monotonic() - started
        problems += label_problems(
            app, await exchange(host, port, raw_request("GET", "/metrics", []))
        )
        print(
            f"\nhostile requests tried / 5xx seen / state changes seen: "
            f"{len(rows)} / {server_errors} / {changes} ({elapsed:.1f} s;"
            f" {sum(r.parser for r in rows)} refused by the HTTP parser,"
            f" {sum(r.stream for r in rows)} live streams opened)"
        )
        assert len(rows) >= 60
        assert not problems, "\n".join(problems)
        assert server_errors == 0 and changes == 0
    finally:
        await runner.cleanup()
