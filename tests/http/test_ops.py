"""/healthz, /readyz when Redis goes away, and the /metrics endpoint itself."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from scoreboard.config import Settings
from scoreboard.http.app import create_app

from ..conftest import AiohttpClient, settings_with
from ..servers import RedisServer, free_port


async def test_healthz(client: TestClient[Any, Any]) -> None:
    r = await client.get("/healthz")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    assert r.headers["X-Request-ID"]
    assert await r.json() == {"status": "ok"}


async def test_readyz_names_redis_when_it_goes_away(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    server = RedisServer().start()
    try:
        client = await aiohttp_client(create_app(settings_with(settings, redis_url=server.url)))
        r = await client.get("/readyz")
        assert r.status == 200 and await r.json() == {"redis": "ok", "database": "ok"}
        server.stop()
        r = await client.get("/readyz")
        body = await r.json()
        assert r.status == 503
        assert body["database"] == "ok"
        assert isinstance(body["redis"], str) and body["redis"] != "ok"
        assert 0 < len(body["redis"]) <= 120
        # Liveness is not readiness: the process itself is fine.
        assert (await client.get("/healthz")).status == 200
    finally:
        server.cleanup()


async def test_readyz_names_redis_when_it_never_answered(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    client = await aiohttp_client(create_app(settings_with(settings, redis_url=closed)))
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 503
    assert set(body) == {"redis", "database"}
    assert body["redis"] != "ok" and body["database"] == "ok"


async def test_metrics_is_prometheus_text(client: TestClient[Any, Any]) -> None:
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    text = await r.text()
    assert "# TYPE scoreboard_score_updates_total counter" in text
    assert "# TYPE scoreboard_http_request_duration_seconds histogram" in text
