"""Helpers of the adversarial suite: a raw HTTP/1.1 exchange and logical state snapshots."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import redis.asyncio as aioredis
from jwt.algorithms import get_default_algorithms

from ..conftest import CLAIM_KEY

Header = tuple[str | bytes, str | bytes]
ALGS = get_default_algorithms()


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def raw_request(
    method: str | bytes,
    target: str | bytes,
    headers: list[Header],
    body: bytes | None = None,
    *,
    length: bool = True,
) -> bytes:
    """The bytes of one HTTP/1.1 request, exactly as given (no normalisation, no checks).

    `Host` and `Connection: close` are added; `Content-Length` too when there is a body
    and `length` is true (false: the caller frames the body itself, e.g. chunked).
    """
    lines = [_bytes(method) + b" " + _bytes(target) + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [_bytes(k) + b": " + _bytes(v) for k, v in headers]
    lines.append(b"Connection: close")
    if body is not None and length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def chunked(body: bytes, size: int = 1024) -> bytes:
    """`body` in chunked transfer coding."""
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]  # fmt: skip
    return b"".join(parts) + b"0\r\n\r\n"


@dataclass
class Reply:
    """A parsed HTTP response; `status` 0 when the server sent nothing parseable."""

    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


def parse_reply(data: bytes) -> Reply:
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2) if lines else []
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        return Reply(0, body=data)
    reply = Reply(int(parts[1]))
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        reply.headers.setdefault(name.strip().lower().decode("latin-1"), []).append(
            value.strip().decode("latin-1")
        )
    length = reply.header("content-length")
    reply.body = body[: int(length)] if length is not None and length.isdigit() else body
    return reply


async def exchange(host: str, port: int, raw: bytes, timeout_s: float = 10.0) -> Reply:
    """Send `raw` on a fresh connection and read the response until the server closes it."""
    reader, writer = await asyncio.open_connection(host, port)

    async def send() -> None:
        # The server may answer (413) and close before it has read a large body.
        with suppress(ConnectionError):
            writer.write(raw)
            await writer.drain()

    sender = asyncio.create_task(send())
    data = b""
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionError:
        pass
    finally:
        await sender
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    return parse_reply(data)


async def first_event(host: str, port: int, raw: bytes, timeout_s: float = 10.0) -> Reply:
    """Send `raw` and read a streaming response up to its first complete `event: top`.

    An error answer (which is not a stream) is read to its end as usual.
    """
    reader, writer = await asyncio.open_connection(host, port)
    data = b""
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep and b"text/event-stream" not in head and parse_reply(data).body == body:
                    continue  # not a stream: read on to the end
                top = body.find(b"event: top")
                if top >= 0 and body.find(b"\n\n", top) >= 0:
                    break
    except ConnectionError:
        pass
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()
    return parse_reply(data)


async def live_state(url: str) -> dict[bytes, Any]:
    """Every key of the test db with its logical value.

    Unlike a DUMP, a stream is reduced to how many entries were ever added and the
    last id: a running sink updates its consumers' seen-times and trims committed
    entries, and neither is a change of scores, nonces or events.
    """
    client = aioredis.Redis.from_url(url)
    try:
        out: dict[bytes, Any] = {}
        async for key in client.scan_iter(count=1000):
            if key == CLAIM_KEY.encode():
                continue
            kind = await client.type(key)
            value: Any
            if kind == b"string":
                value = await client.get(key)
            elif kind == b"hash":
                value = await client.hgetall(key)
            elif kind == b"zset":
                value = await client.zrange(key, 0, -1, withscores=True)
            elif kind == b"set":
                value = sorted(await client.smembers(key))
            elif kind == b"list":
                value = await client.lrange(key, 0, -1)
            elif kind == b"stream":
                info = await client.xinfo_stream(key)
                value = (info["entries-added"], info["last-generated-id"])
            else:
                value = await client.dump(key)
            out[key] = (kind, value)
        return out
    finally:
        await client.aclose()


def db_state(url: str) -> dict[str, Any]:
    """The durable tables' contents that a request could change."""
    with psycopg.connect(url) as conn:
        scores = conn.execute(
            "SELECT board_id, user_id::text, score, version FROM user_scores ORDER BY 1, 2"
        ).fetchall()
        events = conn.execute(
            "SELECT id::text, board_id, user_id::text, delta, nonce FROM score_events ORDER BY 1"
        ).fetchall()
        erasures = conn.execute("SELECT count(*) FROM score_erasures").fetchall()
    return {"user_scores": scores, "score_events": events, "erasures": erasures}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    """A compact JWS with exactly this header, signed as `header["alg"]` says.

    HS* with raw key bytes (PEM bytes included: pyjwt refuses to, an attacker does not);
    `none` gets an empty signature.
    """
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    alg = header.get("alg")
    if alg == "none" or not isinstance(alg, str) or alg.lower() == "none":
        return signing + "."
    if alg.startswith("HS"):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        raw = key if isinstance(key, bytes) else str(key).encode()
        return f"{signing}.{b64(hmac.new(raw, signing.encode(), digest).digest())}"
    return f"{signing}.{b64(ALGS[alg].sign(signing.encode(), key))}"
