"""The embedded default: fakeredis running the same Lua, generated secrets, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .conftest import AiohttpClient, Tokens, new_user
from .servers import free_port, port_open


def embedded_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), sink=False).with_secrets()


async def test_embedded_app_serves_increments(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    settings = embedded_settings(tmp_path)
    client = await aiohttp_client(create_app(settings))
    tokens = Tokens(settings)
    user = new_user()
    headers, body = tokens.request(user, 12)
    r = await client.post("/scores/increment", json=body, headers=headers)
    assert r.status == 200, await r.text()
    r = await client.post("/scores/increment", json=body, headers=headers)
    assert r.status == 409 and (await r.json())["original"]["score"] == 12
    r = await client.get("/scores/top")
    assert (await r.json())["entries"] == [{"rank": 1, "userId": user, "score": 12}]
    r = await client.get(f"/scores/{user}/around?n=1")
    assert (await r.json())["entries"][0]["userId"] == user


def test_secrets_generated_once(tmp_path: Path) -> None:
    a = embedded_settings(tmp_path)
    b = embedded_settings(tmp_path)
    assert a.jwt_secret and a.action_secret and a.jwt_secret != a.action_secret
    assert (a.jwt_secret, a.action_secret) == (b.jwt_secret, b.action_secret)
    assert (tmp_path / "data" / "secrets.json").stat().st_mode & 0o077 == 0


def _cli(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "scoreboard", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _spawn_serve(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scoreboard", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )


async def test_scoreboard_serve_embedded_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    env.update(SCOREBOARD_DATA_DIR=str(tmp_path / "data"), SCOREBOARD_HTTP_PORT=str(port))
    proc = _spawn_serve(env)
    try:
        for _ in range(100):
            if port_open(port):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("serve did not start")
        user = new_user()
        jwt_token = _cli("token", "--user", user, env=env)
        action: dict[str, Any] = json.loads(
            _cli("action-token", "--user", user, "--delta", "30", env=env)
        )
        async with aiohttp.ClientSession() as session:
            r = await session.post(
                f"http://127.0.0.1:{port}/scores/increment",
                json={"userId": user, "delta": 30, "actionToken": action["actionToken"]},
                headers={"Authorization": f"Bearer {jwt_token}", "X-Action-Nonce": action["nonce"]},
            )
            assert r.status == 200, await r.text()
            assert (await r.json())["score"] == 30
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "EMBEDDED MODE" in err
    assert proc.returncode == 0


@pytest.mark.parametrize("command", ["token", "action-token"])
def test_cli_mints_for_the_embedded_server(tmp_path: Path, command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    env["SCOREBOARD_DATA_DIR"] = str(tmp_path / "data")
    args = ["--user", new_user()] + (["--delta", "1"] if command == "action-token" else [])
    assert _cli(command, *args, env=env)
    assert (tmp_path / "data" / "secrets.json").is_file()
