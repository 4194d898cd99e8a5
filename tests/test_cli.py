"""The CLI through main([...]): minting, help, settings errors."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from scoreboard.auth import Verifier
from scoreboard.cli import build_parser, main
from scoreboard.config import Settings

from .conftest import ACTION_SECRET, JWT_SECRET, new_user

SERVER_ENV = {
    "SCOREBOARD_REDIS_URL": "redis://127.0.0.1:6379/0",
    "SCOREBOARD_JWT_SECRET": JWT_SECRET,
    "SCOREBOARD_ACTION_SECRET": ACTION_SECRET,
}


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k in list(__import__("os").environ):
        if k.startswith("SCOREBOARD_"):
            monkeypatch.delenv(k)
    for k, v in SERVER_ENV.items():
        monkeypatch.setenv(k, v)
    return SERVER_ENV


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser, commands = build_parser()
    for name in [*commands, None]:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"] if name else ["--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: scoreboard" in out
        if name:
            assert "--http-port" in out and "SCOREBOARD_HTTP_PORT" in out


def test_token_is_accepted(server_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    user = new_user()
    assert (
        main(["token", "--user", user, "--scope", "scores:admin scores:bonus", "--ttl", "120"]) == 0
    )
    token = capsys.readouterr().out.strip()
    assert "\n" not in token
    settings = Settings.from_env(server_env)
    p = Verifier(settings).user(token)
    assert p.user_id == user and p.admin and p.bonus
    assert (
        jwt.decode(token, options={"verify_signature": False})["exp"]
        - int(__import__("time").time())
        <= 120
    )


def test_token_carries_iss_and_aud(
    server_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    user = new_user()
    assert main(["token", "--user", user, "--jwt-issuer", "me", "--jwt-audience", "you"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "me" and claims["aud"] == "you"
    s = Settings.from_env(
        {**server_env, "SCOREBOARD_JWT_ISSUER": "me", "SCOREBOARD_JWT_AUDIENCE": "you"}
    )
    assert Verifier(s).user(token).user_id == user


def test_action_token(server_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    user = new_user()
    assert main(["action-token", "--user", user, "--delta", "25", "--action", "bonus"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert set(out) == {"nonce", "actionToken"}
    a = Verifier(Settings.from_env(server_env)).action(out["actionToken"])
    assert (a.user_id, a.delta, a.nonce, a.action) == (user, 25, out["nonce"], "bonus")


def test_flags_override_env(server_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    other = "flag-secret-" + "f" * 32
    assert main(["token", "--user", new_user(), "--jwt-secret", other]) == 0
    token = capsys.readouterr().out.strip()
    jwt.decode(token, other, algorithms=["HS256"])


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SCOREBOARD_ACTION_SECRET": ""}, "SCOREBOARD_ACTION_SECRET"),
        ({"SCOREBOARD_JWT_SECRET": ""}, "SCOREBOARD_JWT_SECRET"),
        ({"SCOREBOARD_JWT_SECRET": "short"}, "32 bytes"),
        ({"SCOREBOARD_ACTION_SECRET": JWT_SECRET}, "must differ"),
        ({"SCOREBOARD_HTTP_PORT": "eighty"}, "SCOREBOARD_HTTP_PORT"),
        ({"SCOREBOARD_REDIS_CLUSTER": "maybe"}, "SCOREBOARD_REDIS_CLUSTER"),
        ({"SCOREBOARD_LOG_FORMAT": "xml"}, "SCOREBOARD_LOG_FORMAT"),
        ({"SCOREBOARD_MAX_DELTA": "0"}, "SCOREBOARD_MAX_DELTA"),
    ],
)
def test_serve_refuses_bad_settings(
    server_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    needle: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and needle in err


def test_token_rejects_bad_user(
    server_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--user", "alice"]) == 2
    assert "--user" in capsys.readouterr().err
