"""Structured log lines: one per increment attempt, per auth failure, per replay; JSON or text."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from scoreboard import logs
from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .attempts import ATTEMPTS, Attempt, send
from .conftest import AiohttpClient, Tokens, new_user, settings_with

Lines = Callable[[], list[dict[str, Any]]]
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|\+00:00)")
# The fields an attempt's line carries only once the request got that far.
PARSED = {"ok", "invalid_action_token", "forbidden", "invalid_delta", "replay", "rate_limited"}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def log_setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., io.StringIO]]:
    """`logs.setup` on an in-memory stream; the process's logging restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    monkeypatch.setattr(logs, "_direct", logs._direct)

    def configure(
        level: str = "info", fmt: str = "json", stream: io.StringIO | None = None
    ) -> io.StringIO:
        out = stream if stream is not None else io.StringIO()
        logs.setup(level, fmt, out)
        return out

    try:
        yield configure
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


@pytest.fixture
def lines(log_setup: Callable[..., io.StringIO]) -> Lines:
    """The JSON lines logged so far, each parsed (every line must be JSON)."""
    out = log_setup()
    return lambda: [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture
async def limited(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings_with(settings, rate_limit_per_min=1)))


def of(lines: list[dict[str, Any]], logger: str, request_id: str) -> list[dict[str, Any]]:
    return [x for x in lines if x.get("logger") == logger and x.get("requestId") == request_id]


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=lambda a: a.id)
async def test_one_json_line_per_increment_attempt(
    limited: TestClient[Any, Any], tokens: Tokens, lines: Lines, attempt: Attempt
) -> None:
    user = new_user()
    board = f"t-{secrets.token_hex(4)}"
    rid = f"req-{secrets.token_hex(6)}"
    status, body, sent = await send(
        limited, tokens, attempt, user, f"/boards/{board}/scores/increment", rid
    )
    assert status == attempt.status, body
    logged = lines()
    (line,) = of(logged, "scoreboard.increments", rid)
    assert TS.fullmatch(line["ts"]), line
    assert line["level"] == "info" and line["msg"] == "increment"
    assert line["outcome"] == attempt.outcome
    assert line["boardId"] == board
    assert isinstance(line["latencyMs"], float | int) and 0 <= line["latencyMs"] < 10_000
    if attempt.outcome == "unauthorized":
        assert "userId" not in line
    elif attempt.outcome in PARSED:
        assert line["userId"] == orjson.loads(sent)["userId"]
    else:
        # Authenticated but the body was refused: the caller is who is known.
        assert line["userId"] == user
    if attempt.outcome in PARSED:
        assert line["delta"] == orjson.loads(sent)["delta"]
    else:
        assert "delta" not in line
    if attempt.reason is not None:
        assert line["reason"] == attempt.reason
    else:
        assert "reason" not in line
    if attempt.before is not None:
        (first,) = of(logged, "scoreboard.increments", f"first-{rid}")
        assert first["outcome"] == "ok"


@pytest.mark.parametrize("attempt", [a for a in ATTEMPTS if a.reason], ids=lambda a: a.id)
async def test_one_security_line_per_auth_failure(
    limited: TestClient[Any, Any], tokens: Tokens, lines: Lines, attempt: Attempt
) -> None:
    user = new_user()
    rid = f"req-{secrets.token_hex(6)}"
    status, body, sent = await send(limited, tokens, attempt, user, "/scores/increment", rid)
    (line,) = of(lines(), "scoreboard.security", rid)
    assert TS.fullmatch(line["ts"])
    assert line["level"] == "warning"
    assert line["reason"] == attempt.reason
    assert line["status"] == status and line["error"] == body["error"]
    assert line["route"] == "/scores/increment" and line["method"] == "POST"
    assert line["boardId"] == "global"
    assert line["msg"].startswith(body["error"] + ": ")
    if attempt.outcome == "unauthorized":
        assert "userId" not in line and "delta" not in line
    else:
        assert line["userId"] == orjson.loads(sent)["userId"]
        assert line["delta"] == orjson.loads(sent)["delta"]


async def test_one_security_line_per_replay(
    client: TestClient[Any, Any], tokens: Tokens, lines: Lines
) -> None:
    user = new_user()
    headers, body = tokens.request(user, 5)
    first = await client.post("/scores/increment", json=body, headers=headers)
    assert first.status == 200
    event_id = (await first.json())["eventId"]
    rid = f"req-{secrets.token_hex(6)}"
    again = await client.post(
        "/scores/increment", json=body, headers={**headers, "X-Request-ID": rid}
    )
    assert again.status == 409
    logged = lines()
    (line,) = of(logged, "scoreboard.security", rid)
    assert line["msg"] == "replay detected" and line["level"] == "warning"
    assert line["originalEventId"] == event_id
    assert line["userId"] == user and line["delta"] == 5 and line["boardId"] == "global"
    assert line["status"] == 409 and line["error"] == "replay" and "reason" not in line
    # Successes write no security line.
    assert not [x for x in logged if x["logger"] == "scoreboard.security" and x is not line]


async def test_security_line_for_an_erase_without_admin_scope(
    client: TestClient[Any, Any], tokens: Tokens, lines: Lines
) -> None:
    user = new_user()
    rid = f"req-{secrets.token_hex(6)}"
    r = await client.delete(
        f"/scores/{user}",
        headers={"Authorization": f"Bearer {tokens.user(user)}", "X-Request-ID": rid},
    )
    assert r.status == 403
    (line,) = of(lines(), "scoreboard.security", rid)
    assert line["reason"] == "admin_scope"
    assert line["route"] == "/scores/{userId}" and line["method"] == "DELETE"


async def test_warning_level_keeps_security_lines_only(
    client: TestClient[Any, Any], tokens: Tokens, log_setup: Callable[..., io.StringIO]
) -> None:
    out = log_setup(level="warning")
    headers, body = tokens.request(new_user(), 5)
    assert (await client.post("/scores/increment", json=body, headers=headers)).status == 200
    del headers["Authorization"]
    assert (await client.post("/scores/increment", json=body, headers=headers)).status == 401
    logged = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert [x["logger"] for x in logged] == ["scoreboard.security"]


async def test_text_on_a_terminal(
    client: TestClient[Any, Any], tokens: Tokens, log_setup: Callable[..., io.StringIO]
) -> None:
    out = log_setup(fmt="auto", stream=Tty())
    user = new_user()
    headers, body = tokens.request(user, 5)
    r = await client.post(
        "/scores/increment", json=body, headers={**headers, "X-Request-ID": "plain-1"}
    )
    assert r.status == 200
    (line,) = [x for x in out.getvalue().splitlines() if "requestId=plain-1" in x]
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d info +scoreboard\.increments: increment requestId=plain-1 "
        rf"boardId=global userId={user} delta=5 outcome=ok latencyMs=[0-9.]+",
        line,
    ), line
    logging.getLogger("scoreboard.test").warning("hello %s", "there")
    assert re.search(r"\d\d:\d\d:\d\d warning +scoreboard\.test: hello there", out.getvalue())


@pytest.mark.parametrize(
    ("fmt", "stream", "json"),
    [("json", Tty, True), ("auto", io.StringIO, True), ("text", io.StringIO, False)],
    ids=["json-on-terminal", "auto-on-pipe", "text-on-pipe"],
)
def test_format_choice(
    log_setup: Callable[..., io.StringIO], fmt: str, stream: type[io.StringIO], json: bool
) -> None:
    out = log_setup(fmt=fmt, stream=stream())
    logs.event(logs.INCREMENTS, "increment", {"requestId": "r1", "outcome": "ok"})
    logging.getLogger("scoreboard.test").info("plain record")
    first, second = out.getvalue().splitlines()
    if json:
        assert orjson.loads(first)["requestId"] == "r1"
        assert orjson.loads(second)["msg"] == "plain record"
    else:
        assert first.endswith("increment requestId=r1 outcome=ok")
        assert second.endswith("scoreboard.test: plain record")


class CountingWrites(io.StringIO):
    """A stream that counts its write calls."""

    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


async def test_lines_of_one_event_loop_turn_are_written_by_one_call(
    log_setup: Callable[..., io.StringIO],
) -> None:
    out = log_setup(stream=CountingWrites())
    for i in range(5):
        logs.event(logs.INCREMENTS, "increment", {"i": i})
    assert out.getvalue() == ""  # the turn is still running
    await asyncio.sleep(0)
    assert [orjson.loads(line)["i"] for line in out.getvalue().splitlines()] == list(range(5))
    assert isinstance(out, CountingWrites) and out.writes == 1
    logs.event(logs.INCREMENTS, "increment", {"i": 5})
    logs.flush()  # what runs at exit: nothing waits for a turn that never comes
    assert orjson.loads(out.getvalue().splitlines()[-1])["i"] == 5


def test_a_line_outside_an_event_loop_is_written_at_once(
    log_setup: Callable[..., io.StringIO],
) -> None:
    out = log_setup()
    logs.event(logs.INCREMENTS, "increment", {"i": 1})
    assert orjson.loads(out.getvalue())["i"] == 1


def test_lines_left_by_a_closed_loop_go_out_with_the_next_ones(
    log_setup: Callable[..., io.StringIO],
) -> None:
    out = log_setup()
    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        logs.event(logs.INCREMENTS, "increment", {"i": 1})
        loop.stop()

    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()  # the flush it scheduled never ran
    assert out.getvalue() == ""

    async def log_another() -> None:
        logs.event(logs.INCREMENTS, "increment", {"i": 2})

    asyncio.run(log_another())
    assert [orjson.loads(line)["i"] for line in out.getvalue().splitlines()] == [1, 2]
