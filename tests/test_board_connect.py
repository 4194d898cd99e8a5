"""The Redis client: commands packed by hiredis give the same bytes as redis-py's packer."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection

from scoreboard.board import connect, hiredis_packing


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "v"),
        ("EVALSHA", "ab" * 20, 2, "sb:{b}:x", "sb:{b}:y", -5, 9007199254740991, 1.5, "é"),
        ("SCRIPT LOAD", "return 1"),
        (b"CONFIG GET", b"maxmemory-policy"),
        ("XADD", "s", "*", "k", b"\x00\xff"),
    ],
)
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    plain = Connection()
    fast = hiredis_packing(Connection)()
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))


async def test_connect_uses_it(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
    finally:
        await client.aclose()
