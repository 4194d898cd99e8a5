"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from .conftest import CLAIM_KEY


async def redis_state(url: str) -> dict[bytes, bytes]:
    """Every key of the test db with its serialised value: equal states mean nothing changed."""
    client = aioredis.Redis.from_url(url)
    try:
        out: dict[bytes, bytes] = {}
        async for key in client.scan_iter(count=1000):
            if key == CLAIM_KEY.encode():
                continue
            out[key] = await client.dump(key) or b""
        return out
    finally:
        await client.aclose()


def error_body_ok(body: Any, code: str) -> bool:
    """The contract's error body with the given code."""
    return (
        isinstance(body, dict)
        and body.get("error") == code
        and isinstance(body.get("message"), str)
        and bool(body["message"])
        and isinstance(body.get("requestId"), str)
        and bool(body["requestId"])
    )
