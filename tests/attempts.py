"""Increment attempts, one per outcome of the contract's check table, and a /metrics reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Tokens, new_user

Request = tuple[dict[str, str], bytes]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _valid(tokens: Tokens, user: str) -> Request:
    headers, body = tokens.request(user, 5)
    return headers, orjson.dumps(body)


def _no_token(tokens: Tokens, user: str) -> Request:
    headers, body = _valid(tokens, user)
    del headers["Authorization"]
    return headers, body


def _too_large(tokens: Tokens, user: str) -> Request:
    headers, _ = _valid(tokens, user)
    return headers, b'{"pad": "' + b"x" * 17_000 + b'"}'


def _text_plain(tokens: Tokens, user: str) -> Request:
    headers, body = _valid(tokens, user)
    headers["Content-Type"] = "text/plain"
    return headers, body


def _not_json(tokens: Tokens, user: str) -> Request:
    headers, _ = _valid(tokens, user)
    return headers, b'{"userId": NaN}'


def _foreign_action_key(tokens: Tokens, user: str) -> Request:
    headers, body = tokens.request(user, 5)
    nonce, token = tokens.action(user, 5, key="not-the-action-secret-" + "k" * 32)
    headers["X-Action-Nonce"] = nonce
    body["actionToken"] = token
    return headers, orjson.dumps(body)


def _other_user(tokens: Tokens, user: str) -> Request:
    headers, body = tokens.request(new_user(), 5, caller=user)
    return headers, orjson.dumps(body)


def _zero_delta(tokens: Tokens, user: str) -> Request:
    headers, body = tokens.request(user, 0)
    return headers, orjson.dumps(body)


@dataclass(frozen=True)
class Attempt:
    """One increment attempt: what it sends and what it must be counted as."""

    outcome: str
    status: int
    build: Callable[[Tokens, str], Request]
    reason: str | None = None
    # "same": the request is sent once before (a replay); "fresh": another valid
    # request of the same user is sent before (uses up a rate limit of 1).
    before: str | None = None

    @property
    def id(self) -> str:
        return self.outcome


ATTEMPTS = (
    Attempt("ok", 200, _valid),
    Attempt("unauthorized", 401, _no_token, reason="missing"),
    Attempt("payload_too_large", 413, _too_large),
    Attempt("unsupported_media_type", 415, _text_plain),
    Attempt("bad_request", 400, _not_json),
    Attempt("invalid_action_token", 403, _foreign_action_key, reason="action_bad_signature"),
    Attempt("forbidden", 403, _other_user, reason="other_user"),
    Attempt("invalid_delta", 422, _zero_delta),
    Attempt("replay", 409, _valid, before="same"),
    Attempt("rate_limited", 429, _valid, before="fresh"),
)


async def send(
    client: TestClient[Any, Any],
    tokens: Tokens,
    attempt: Attempt,
    user: str,
    path: str,
    request_id: str | None = None,
) -> tuple[int, dict[str, Any], bytes]:
    """Send the attempt (and what must come before it); (status, body, sent body) of
    the attempt.

    A request that comes before gets the request id `first-<request_id>`.
    """
    headers, body = attempt.build(tokens, user)
    if attempt.before is not None:
        first = (headers, body) if attempt.before == "same" else _valid(tokens, user)
        first_headers = dict(first[0])
        if request_id:
            first_headers["X-Request-ID"] = f"first-{request_id}"
        r = await client.post(path, data=first[1], headers=first_headers)
        assert r.status == 200, await r.text()
    if request_id:
        headers = {**headers, "X-Request-ID": request_id}
    r = await client.post(path, data=body, headers=headers)
    return r.status, await r.json(), body


async def scrape(client: TestClient[Any, Any]) -> Samples:
    """Every sample of /metrics by (sample name, labels)."""
    r = await client.get("/metrics")
    assert r.status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(await r.text()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series that does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def diff(before: Samples, after: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The series of `name` that moved between two scrapes, with how much."""
    moved = {}
    for (n, labels), v in after.items():
        if n == name and v != before.get((n, labels), 0.0):
            moved[labels] = v - before.get((n, labels), 0.0)
    return moved
