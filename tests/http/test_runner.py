"""Requests aiohttp's HTTP parser refuses get the contract's error body from the real
processes too: `scoreboard serve`, alone and as a supervised group of workers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ..adversarial.support import exchange
from ..helpers import error_body_ok
from ..processes import serving

MALFORMED = {
    "a space inside a header name": b"GET /scores/top HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "a 10 KiB request line": b"GET /scores/top?" + b"a" * 10240 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_malformed_request_gets_the_contract_body(
    redis_url: str, tmp_path: Path, workers: str
) -> None:
    with serving(redis_url, tmp_path, SCOREBOARD_WORKERS=workers, SCOREBOARD_LOG_LEVEL="info") as (
        server,
    ):
        ids = []
        for name, raw in MALFORMED.items():
            reply = await exchange("127.0.0.1", server.port, raw)
            assert reply.status == 400, (name, reply)
            body = reply.json()
            assert error_body_ok(body, "bad_request"), (name, reply.body)
            assert reply.header("content-type") == "application/json; charset=utf-8"
            assert reply.header("x-request-id") == body["requestId"]
            # The parser's own message quotes the request back; ours does not.
            assert b"aaaa" not in reply.body and b"Bad Header" not in reply.body
            ids.append(body["requestId"])
        # A well-formed request on the same server is still served as usual.
        ok = await exchange("127.0.0.1", server.port, b"GET /scores/top HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # fmt: skip
        assert ok.status == 200 and "entries" in orjson.loads(ok.body)
        server.stop()
        lines = [orjson.loads(line) for line in server.log.read_text().splitlines() if line]
        refused = [line for line in lines if "malformed HTTP request" in line.get("msg", "")]
        assert sorted(line["requestId"] for line in refused) == sorted(ids)
