"""Every contract metric (section 7) is exposed and moves by exactly what the traffic did."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from scoreboard.config import Settings
from scoreboard.http.app import create_app
from scoreboard.http.state import HUB
from scoreboard.metrics import OUTCOMES

from .attempts import ATTEMPTS, Attempt, diff, scrape, send, value
from .conftest import AiohttpClient, Tokens, new_user, settings_with
from .servers import RedisServer

UPDATES = "scoreboard_score_updates_total"
AUTH = "scoreboard_auth_failures_total"
CACHE = "scoreboard_cache_requests_total"
DURATION = "scoreboard_http_request_duration_seconds"


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


@pytest.fixture
async def limited(
    aiohttp_client: AiohttpClient, settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    """A client whose server allows one increment per user per minute."""
    yield await aiohttp_client(create_app(settings_with(settings, rate_limit_per_min=1)))


async def test_every_contract_metric_is_exposed_with_its_labels(
    client: TestClient[Any, Any],
) -> None:
    samples = await scrape(client)
    for outcome in OUTCOMES:
        assert (UPDATES, labels(outcome=outcome)) in samples
    for result in ("hit", "miss"):
        assert (CACHE, labels(result=result)) in samples
    for transport in ("sse", "ws"):
        assert ("scoreboard_stream_clients", labels(transport=transport)) in samples
    assert ("scoreboard_sink_events_total", frozenset()) in samples
    assert ("scoreboard_sink_lag_events", frozenset()) in samples
    assert ("process_cpu_seconds_total", frozenset()) in samples
    # The contract's outcome list, exactly: a dashboard keyed on it sees every series.
    assert set(OUTCOMES) == {
        "ok", "unauthorized", "bad_request", "forbidden", "invalid_action_token",
        "invalid_delta", "replay", "rate_limited", "payload_too_large",
        "unsupported_media_type", "error",
    }  # fmt: skip
    # The scrape itself was timed: route, method and status labels.
    samples = await scrape(client)
    assert value(samples, f"{DURATION}_count", route="/metrics", method="GET", status="200") >= 1


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=lambda a: a.id)
@pytest.mark.parametrize("path", ["/scores/increment", "/boards/{board}/scores/increment"])
async def test_each_increment_outcome_counts_once(
    limited: TestClient[Any, Any], tokens: Tokens, attempt: Attempt, path: str
) -> None:
    route = path.replace("{board}", "{boardId}")
    path = path.format(board=f"t-{secrets.token_hex(4)}")
    before = await scrape(limited)
    status, body, _ = await send(limited, tokens, attempt, new_user(), path)
    after = await scrape(limited)
    assert status == attempt.status, body
    expected = {labels(outcome=attempt.outcome): 1.0}
    if attempt.before is not None:
        expected[labels(outcome="ok")] = 1.0
    assert diff(before, after, UPDATES) == expected
    auth = {labels(reason=attempt.reason): 1.0} if attempt.reason else {}
    assert diff(before, after, AUTH) == auth
    timed = diff(before, after, f"{DURATION}_count")
    assert timed[labels(route=route, method="POST", status=str(attempt.status))] >= 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, t, u: h.pop("Authorization"), "missing"),
        (lambda h, t, u: h.__setitem__("Authorization", "Basic abc"), "scheme"),
        (lambda h, t, u: h.__setitem__("Authorization", "Bearer not.a.jwt"), "malformed"),
        (lambda h, t, u: h.__setitem__("Authorization", f"Bearer {t.user(u, ttl=-3600)}"), "expired"),
        (lambda h, t, u: h.__setitem__("Authorization", h["Authorization"][:-4] + "AAAA"), "bad_signature"),
    ],
    ids=["missing", "scheme", "malformed", "expired", "bad_signature"],
)  # fmt: skip
async def test_user_token_failures_count_by_reason(
    client: TestClient[Any, Any], tokens: Tokens, mutate: Any, reason: str
) -> None:
    user = new_user()
    headers, body = tokens.request(user, 3)
    mutate(headers, tokens, user)
    before = await scrape(client)
    r = await client.post("/scores/increment", json=body, headers=headers)
    assert r.status == 401
    after = await scrape(client)
    assert diff(before, after, AUTH) == {labels(reason=reason): 1.0}
    assert diff(before, after, UPDATES) == {labels(outcome="unauthorized"): 1.0}


async def test_duplicate_authorization_header_counts_as_its_own_reason(
    client: TestClient[Any, Any], tokens: Tokens
) -> None:
    user = new_user()
    headers, body = tokens.request(user, 3)
    raw = [(k, v) for k, v in headers.items()] + [("Authorization", headers["Authorization"])]
    before = await scrape(client)
    r = await client.post("/scores/increment", json=body, headers=raw)
    assert r.status == 401
    after = await scrape(client)
    assert diff(before, after, AUTH) == {labels(reason="duplicate_header"): 1.0}


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda t, u, n: t.action(u, 5, nonce=n, ttl=3600), "action_ttl"),
        (lambda t, u, n: t.action(new_user(), 5, nonce=n), "action_sub"),
        (lambda t, u, n: t.action(u, 5), "action_nonce"),
        (lambda t, u, n: t.action(u, 6, nonce=n), "action_delta"),
        (lambda t, u, n: t.action(u, 5, nonce=n, ttl=-3600, iat=0), "action_expired"),
    ],
    ids=["ttl", "sub", "nonce", "delta", "expired"],
)
async def test_action_token_failures_count_by_reason(
    client: TestClient[Any, Any], tokens: Tokens, build: Any, reason: str
) -> None:
    user = new_user()
    headers, body = tokens.request(user, 5)
    _, body["actionToken"] = build(tokens, user, headers["X-Action-Nonce"])
    before = await scrape(client)
    r = await client.post("/scores/increment", json=body, headers=headers)
    assert r.status == 403, await r.text()
    after = await scrape(client)
    assert diff(before, after, AUTH) == {labels(reason=reason): 1.0}
    assert diff(before, after, UPDATES) == {labels(outcome="invalid_action_token"): 1.0}


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"caller": "other", "delta": 5}, "other_user"),
        ({"action": "bonus", "delta": 5}, "bonus_scope"),
        ({"delta": -5}, "penalty_scope"),
    ],
    ids=["other_user", "bonus", "penalty"],
)
async def test_authorization_failures_count_by_reason(
    client: TestClient[Any, Any], tokens: Tokens, kwargs: dict[str, Any], reason: str
) -> None:
    user = new_user()
    delta = kwargs.pop("delta")
    if kwargs.get("caller") == "other":
        kwargs["caller"] = new_user()
    headers, body = tokens.request(user, delta, **kwargs)
    before = await scrape(client)
    r = await client.post("/scores/increment", json=body, headers=headers)
    assert r.status == 403, await r.text()
    after = await scrape(client)
    assert diff(before, after, AUTH) == {labels(reason=reason): 1.0}
    assert diff(before, after, UPDATES) == {labels(outcome="forbidden"): 1.0}


async def test_an_unreachable_store_counts_as_error(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: Tokens
) -> None:
    server = RedisServer().start()
    try:
        client = await aiohttp_client(create_app(settings_with(settings, redis_url=server.url)))
        headers, body = tokens.request(new_user(), 5)
        r = await client.post("/scores/increment", json=body, headers=headers)
        assert r.status == 200
        server.stop()
        before = await scrape(client)
        headers, body = tokens.request(new_user(), 5)
        r = await client.post("/scores/increment", json=body, headers=headers)
        assert r.status == 500
        assert (await r.json())["error"] == "store_unavailable"
        after = await scrape(client)
        assert diff(before, after, UPDATES) == {labels(outcome="error"): 1.0}
        assert diff(before, after, AUTH) == {}
    finally:
        server.cleanup()


async def test_two_top_reads_are_a_miss_then_a_hit(client: TestClient[Any, Any]) -> None:
    app = client.app
    assert app is not None
    await asyncio.wait_for(app[HUB].ready.wait(), 5)
    # A board of this test's own: other runs may publish on the shared global channel.
    path = f"/boards/t-{secrets.token_hex(4)}/scores/top"
    before = await scrape(client)
    assert (await client.get(path)).status == 200
    middle = await scrape(client)
    assert (await client.get(path)).status == 200
    after = await scrape(client)
    assert diff(before, middle, CACHE) == {labels(result="miss"): 1.0}
    assert diff(middle, after, CACHE) == {labels(result="hit"): 1.0}


async def test_an_increment_that_changes_the_top_makes_the_next_read_a_miss(
    client: TestClient[Any, Any], tokens: Tokens
) -> None:
    app = client.app
    assert app is not None
    await asyncio.wait_for(app[HUB].ready.wait(), 5)
    board = f"t-{secrets.token_hex(4)}"
    assert (await client.get(f"/boards/{board}/scores/top")).status == 200
    headers, body = tokens.request(new_user(), 5)
    r = await client.post(f"/boards/{board}/scores/increment", json=body, headers=headers)
    assert r.status == 200
    before = await scrape(client)
    top = await (await client.get(f"/boards/{board}/scores/top")).json()
    after = await scrape(client)
    assert len(top["entries"]) == 1
    assert diff(before, after, CACHE) == {labels(result="miss"): 1.0}


async def test_request_duration_labels(client: TestClient[Any, Any]) -> None:
    user = new_user()
    await client.get(f"/scores/{user}")
    await client.get("/no/such/route")
    await client.request("PURGE", "/scores/top")
    await client.get("/scores/top?limit=0")
    samples = await scrape(client)
    count = f"{DURATION}_count"
    assert value(samples, count, route="/scores/{userId}", method="GET", status="404") == 1
    assert value(samples, count, route="unmatched", method="GET", status="404") == 1
    assert value(samples, count, route="/scores/top", method="GET", status="400") == 1
    # Unknown methods share one label value: clients cannot mint new series.
    methods = {dict(k[1]).get("method") for k in samples if k[0] == count}
    assert "PURGE" not in methods and "other" in methods
    bucket = value(
        samples,
        f"{DURATION}_bucket",
        route="/scores/{userId}",
        method="GET",
        status="404",
        le="+Inf",
    )
    assert bucket == 1


async def test_an_oversized_chunked_body_counts_as_payload_too_large(
    client: TestClient[Any, Any], tokens: Tokens
) -> None:
    headers, _ = tokens.request(new_user(), 5)

    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 1024

    before = await scrape(client)
    r = await client.post("/scores/increment", data=chunks(), headers=headers)
    assert r.status == 413
    assert (await r.json())["error"] == "payload_too_large"
    after = await scrape(client)
    assert diff(before, after, UPDATES) == {labels(outcome="payload_too_large"): 1.0}


def test_lock_free_families_expose_what_the_library_would() -> None:
    """A lone process's plain-number histogram and counters render exactly like
    prometheus-client's own classes fed the same values (less the `_created` series)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from scoreboard.metrics import DURATION_BUCKETS, DURATION_LABELS, Metrics

    ours = Metrics()
    reference = CollectorRegistry()
    histogram = Histogram(
        DURATION, "HTTP request latency", DURATION_LABELS, registry=reference,
        buckets=DURATION_BUCKETS,
    )  # fmt: skip
    counter = Counter(CACHE, "reads", ["result"], registry=reference)
    # Bounds exactly, just above them, zero, and past the last bucket.
    values = [0.0, 0.0005, 0.00051, 0.001, 0.0099, 0.01, 0.3, 2.5, 5.0, 5.01, 60.0]
    for i, v in enumerate(values):
        labels = ("/scores/top", "GET", "200" if i % 3 else "304")
        ours.request_timer(labels[0], labels[1], int(labels[2])).observe(v)
        histogram.labels(*labels).observe(v)
    for _ in range(3):
        ours.cache_hit.inc()
        counter.labels(result="hit").inc()
    counter.labels(result="miss")

    def samples(text: bytes, names: tuple[str, ...]) -> dict[Any, float]:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples
            if s.name.startswith(names) and not s.name.endswith("_created")
        }

    names = (DURATION, CACHE)
    got, want = samples(ours.exposition(), names), samples(generate_latest(reference), names)
    assert got == want and len(got) == 2 * (len(DURATION_BUCKETS) + 3) + 2
