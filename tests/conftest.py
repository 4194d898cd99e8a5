"""Shared fixtures: real Redis (a claimed db number), real PostgreSQL (a fresh database)."""

from __future__ import annotations

import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient

from scoreboard.config import Settings
from scoreboard.http.app import create_app

from .servers import RedisServer, base_servers

# The durability tests' `live` (Board) and `db` (PostgreSQL store) fixtures.
pytest_plugins = ["tests.durable"]

JWT_SECRET = "test-jwt-secret-" + "j" * 32
ACTION_SECRET = "test-action-secret-" + "a" * 32
CLAIM_KEY = "sb:test:claimed-by"

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[str, str]]:
    with base_servers() as urls:
        yield urls


CLAIM_TTL_S = 600


def _claim_is_stale(client: redis.Redis) -> bool:
    """A claim left by a test run that is gone: its process is dead, or it stopped refreshing."""
    value = client.get(CLAIM_KEY)
    if value is None:
        return False
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    host, _, rest = text.partition(":")
    pid, _, _ = rest.partition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    # Claims of another form are refreshed by every test of a live run.
    ttl = client.ttl(CLAIM_KEY)
    return 0 <= ttl < 3000


def _claim(base: str, token: str) -> str | None:
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{db}")
        try:
            if client.dbsize() > 0 and _claim_is_stale(client):
                client.flushdb()
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_TTL_S):
                return f"{base}/{db}"
        finally:
            client.close()
    return None


@pytest.fixture(scope="session")
def redis_db_url(servers: tuple[str, str]) -> Iterator[str]:
    """A Redis db number of this session's own: an empty (or stale) one, claimed, flushed
    when done. When every db of the shared server is taken, a throwaway server instead."""
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4()}"
    url = _claim(servers[0], token)
    if url is None:
        server = RedisServer().start()
        try:
            yield f"{server.url.rsplit('/', 1)[0]}/1"
        finally:
            server.cleanup()
        return
    client = redis.Redis.from_url(url)
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_url(redis_db_url: str) -> Iterator[str]:
    """The claimed db, emptied before and after the test."""
    client = redis.Redis.from_url(redis_db_url)
    claim = client.get(CLAIM_KEY)

    def reset() -> None:
        client.flushdb()
        if claim is not None:
            client.set(CLAIM_KEY, claim, ex=CLAIM_TTL_S)

    reset()
    try:
        yield redis_db_url
    finally:
        reset()
        client.close()


@pytest.fixture(scope="session")
def pg_admin_url(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"sb_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = pg_admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    """Server-mode settings on the test's Redis; no sink (durability tests add one)."""
    return Settings(
        redis_url=redis_url,
        jwt_secret=JWT_SECRET,
        action_secret=ACTION_SECRET,
        data_dir=str(tmp_path / "data"),
        sink=False,
        log_format="json",
    )


@dataclass(frozen=True)
class Tokens:
    """Mints user JWTs and action tokens for tests, including malformed ones."""

    settings: Settings

    def user(self, sub: str, scope: str = "", ttl: int = 600, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl}
        if scope:
            body["scope"] = scope
        if self.settings.jwt_issuer:
            body["iss"] = self.settings.jwt_issuer
        if self.settings.jwt_audience:
            body["aud"] = self.settings.jwt_audience
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.settings.jwt_secret, algorithm="HS256")

    def action(
        self,
        sub: str,
        delta: int,
        nonce: str | None = None,
        action: str = "score",
        ttl: int = 120,
        key: str | None = None,
        **claims: Any,
    ) -> tuple[str, str]:
        nonce = nonce or secrets.token_urlsafe(18)
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": sub,
            "nonce": nonce,
            "delta": delta,
            "action": action,
            "iat": now,
            "exp": now + ttl,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return nonce, jwt.encode(body, key or self.settings.action_secret, algorithm="HS256")

    def request(
        self,
        user: str,
        delta: int,
        *,
        caller: str | None = None,
        scope: str = "",
        action: str = "score",
        nonce: str | None = None,
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """(headers, body) of a valid increment request."""
        nonce, token = self.action(user, delta, nonce=nonce, action=action)
        headers = {
            "Authorization": f"Bearer {self.user(caller or user, scope)}",
            "X-Action-Nonce": nonce,
            "Content-Type": "application/json",
        }
        return headers, {"userId": user, "delta": delta, "actionToken": token}


@pytest.fixture
def tokens(settings: Settings) -> Tokens:
    return Tokens(settings)


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    yield await aiohttp_client(create_app(settings))


def new_user() -> str:
    return str(uuid.uuid4())


def settings_with(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
