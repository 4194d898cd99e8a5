"""A model of the whole service: hypothesis drives the real app, Redis, sink and PostgreSQL.

Rules: valid increments, bonuses, admin penalties, retries of a request byte for byte,
replays of a nonce with another body, erasing a user, restarting the sink (cleanly or
by killing it), and losing Redis (flush) then reseeding it from PostgreSQL.

Invariants after every step, against a plain dict model of every board:
- the live board (the sorted set, each user's GET, and the top page) equals the model,
  with competition ranks computed from the model, and `version` never goes back;
- once the sink has drained, PostgreSQL's `user_scores` equals the model, each user's
  events sum to their score, and there is exactly one event per accepted increment
  (no point lost or counted twice, through restarts, flushes and reseeds).

Bounded for CI: derandomized, a fixed number of examples and steps (see SETTINGS).
The app runs in a private event loop (hypothesis rules are synchronous), on fresh
board ids per example so no cached state carries over.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import orjson
import psycopg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from scoreboard import board as board_mod
from scoreboard import keys
from scoreboard.config import Settings
from scoreboard.http.app import create_app
from scoreboard.metrics import Metrics
from scoreboard.persist.postgres import PostgresStore
from scoreboard.persist.progress import Quiet
from scoreboard.persist.reseed import Reseeder, nonce_window_s
from scoreboard.sink import Sink

from ..conftest import CLAIM_KEY, CLAIM_TTL_S, Tokens, settings_with
from ..durable import FAST, pg_store

T = TypeVar("T")
SETTINGS = hypothesis_settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: a failure is reported at once with its whole (short) step list, inside
    # the per-test timeout. Add Phase.shrink when investigating one locally.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
USERS = [str(uuid.UUID(int=(0x5C0E << 112) + i, version=4)) for i in range(5)]
ADMIN = str(uuid.UUID(int=(0xAD << 120) + 1, version=4))
DRAIN_S = 15.0
# Quick to react: each example's boards are new, and the sink looks for new boards on a timer.
SINK_OPTIONS = replace(FAST, boards_every_s=0.05)


@dataclass(frozen=True)
class Sent:
    """An accepted request, kept to be retried byte for byte."""

    path: str
    headers: dict[str, str]
    body: bytes
    board: str
    user: str
    nonce: str
    original: dict[str, Any]


@dataclass
class World:
    """What lives for the whole test: the loop, the app, the stores."""

    loop: asyncio.AbstractEventLoop
    settings: Settings
    redis_url: str
    pg_url: str
    client: TestClient[Any, Any]
    redis: aioredis.Redis
    sink_client: board_mod.RedisClient
    store: PostgresStore
    db: psycopg.Connection[Any]
    claim: bytes | str | None
    sink: Sink | None = None
    sink_task: asyncio.Task[None] | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def start_sink(self) -> None:
        self.sink = Sink(self.sink_client, self.store, Metrics(), SINK_OPTIONS)
        self.sink_task = asyncio.create_task(self.sink.run())

    async def stop_sink(self, *, crash: bool = False) -> None:
        sink, task = self.sink, self.sink_task
        self.sink = self.sink_task = None
        if sink is None or task is None:
            return
        if crash:
            # Killed mid-flight: whatever it read stays pending for the next sink to claim.
            task.cancel()
        else:
            sink.stop()
        # Bounded: a sink that does not end is a failure, not a hung test.
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the sink did not end"
        if not task.cancelled():
            task.result()

    async def drain(self) -> None:
        assert self.sink is not None
        assert await self.sink.drain(DRAIN_S), "the sink did not drain"

    async def flush(self) -> None:
        await self.redis.flushdb()
        if self.claim is not None:
            await self.redis.set(CLAIM_KEY, self.claim, ex=CLAIM_TTL_S)


def ranked(scores: dict[str, int]) -> list[tuple[int, str, int]]:
    """(rank, user, score) in board order: points desc, user asc, competition ranks."""
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    out: list[tuple[int, str, int]] = []
    for i, (user, score) in enumerate(ordered):
        rank = out[-1][0] if out and out[-1][2] == score else i + 1
        out.append((rank, user, score))
    return out


def rank_of(scores: dict[str, int], user: str) -> int | None:
    if user not in scores:
        return None
    return 1 + sum(1 for s in scores.values() if s > scores[user])


class Stats:
    examples = 0
    steps = 0
    by_rule: ClassVar[dict[str, int]] = {}


class ServiceModel(RuleBasedStateMachine):
    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        w.run(w.stop_sink())
        w.run(w.flush())
        w.db.execute("TRUNCATE user_scores, score_events, score_erasures")
        w.run(w.start_sink())
        self.tokens = Tokens(w.settings)
        tag = secrets.token_hex(3)
        self.boards = [f"m-{tag}-a", f"m-{tag}-b"]
        self.model: dict[str, dict[str, int]] = {b: {} for b in self.boards}
        self.versions: dict[str, int] = dict.fromkeys(self.boards, 0)
        self.sent: list[Sent] = []
        self.accepted = 0
        # Changes since the last flush / sink restart: repeating either on an unchanged
        # service proves nothing new, and would crowd out the other rules.
        self.since_flush = self.since_restart = 0
        Stats.examples += 1

    # -- helpers ------------------------------------------------------------------

    def step(self, name: str) -> None:
        Stats.steps += 1
        Stats.by_rule[name] = Stats.by_rule.get(name, 0) + 1

    async def _post(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        r = await self.world.client.post(path, data=body, headers=headers)
        return r.status, await r.json()

    def _apply(
        self, board: str, user: str, delta: int, *, caller: str, scope: str, action: str
    ) -> None:
        nonce, token = self.tokens.action(user, delta, action=action)
        headers = {
            "Authorization": f"Bearer {self.tokens.user(caller, scope)}",
            "X-Action-Nonce": nonce,
            "Content-Type": "application/json",
        }
        body = orjson.dumps({"userId": user, "delta": delta, "actionToken": token})
        path = f"/boards/{board}/scores/increment"
        scores = self.model[board]
        previous = rank_of(scores, user)
        status, data = self.world.run(self._post(path, headers, body))
        assert status == 200, data
        scores[user] = scores.get(user, 0) + delta
        self.accepted += 1
        self.since_flush += 1
        self.since_restart += 1
        assert data["score"] == scores[user], (data, scores)
        assert data["rank"] == rank_of(scores, user), (data, scores)
        assert data["previousRank"] == previous, (data, previous)
        original = {"eventId": data["eventId"], "score": data["score"], "rank": data["rank"]}
        self.sent.append(Sent(path, headers, body, board, user, nonce, original))

    # -- rules --------------------------------------------------------------------

    boards_i = st.integers(0, 1)
    users_i = st.integers(0, len(USERS) - 1)

    @initialize()
    def start(self) -> None:
        self.check()

    @rule(b=boards_i, u=users_i, delta=st.integers(1, 4) | st.just(1000))
    def increment(self, b: int, u: int, delta: int) -> None:
        self.step("increment")
        user = USERS[u]
        self._apply(self.boards[b], user, delta, caller=user, scope="", action="score")

    @rule(b=boards_i, u=users_i, delta=st.sampled_from([10, 100_000]))
    def bonus(self, b: int, u: int, delta: int) -> None:
        self.step("bonus")
        user = USERS[u]
        self._apply(self.boards[b], user, delta, caller=user, scope="scores:bonus", action="bonus")

    @rule(b=boards_i, u=users_i, delta=st.integers(-3, -1) | st.just(-1000))
    def penalty(self, b: int, u: int, delta: int) -> None:
        self.step("penalty")
        self._apply(
            self.boards[b], USERS[u], delta, caller=ADMIN, scope="scores:admin", action="penalty"
        )

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10**6))
    def retry(self, pick: int) -> None:
        """The same bytes again (a client retrying after a lost response): 409 + original."""
        self.step("retry")
        sent = self.sent[pick % len(self.sent)]
        status, data = self.world.run(self._post(sent.path, sent.headers, sent.body))
        assert status == 409 and data["error"] == "replay", data
        assert data["original"] == sent.original, (data, sent)

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 10**6), delta=st.integers(1, 1000))
    def replay_other_body(self, pick: int, delta: int) -> None:
        """A used nonce with a freshly signed token for another delta: still a replay."""
        self.step("replay_other_body")
        sent = self.sent[pick % len(self.sent)]
        nonce, token = self.tokens.action(sent.user, delta, nonce=sent.nonce)
        body = orjson.dumps({"userId": sent.user, "delta": delta, "actionToken": token})
        status, data = self.world.run(self._post(sent.path, sent.headers, body))
        assert status == 409 and data["error"] == "replay", data

    @precondition(lambda self: any(self.model.values()))
    @rule(b=boards_i, u=users_i)
    def erase(self, b: int, u: int) -> None:
        board, user = self.boards[b], USERS[u]
        self.step("erase" if user in self.model[board] else "erase_absent")
        headers = {"Authorization": f"Bearer {self.tokens.user(ADMIN, 'scores:admin')}"}

        async def go() -> int:
            r = await self.world.client.delete(f"/boards/{board}/scores/{user}", headers=headers)
            return r.status

        status = self.world.run(go())
        if user in self.model[board]:
            assert status == 204
            del self.model[board][user]
            self.since_flush += 1
            self.since_restart += 1
        else:
            assert status == 404

    @precondition(lambda self: self.since_restart)
    @rule(crash=st.booleans())
    def restart_sink(self, crash: bool) -> None:
        self.step("restart_sink_crash" if crash else "restart_sink")
        self.since_restart = 0
        w = self.world
        w.run(w.stop_sink(crash=crash))
        w.run(w.start_sink())

    @precondition(lambda self: self.since_flush)
    @rule()
    def flush_and_reseed(self) -> None:
        """Redis loses everything (after the sink has committed it); reseed from PostgreSQL."""
        self.step("flush_and_reseed")
        self.since_flush = self.since_restart = 0
        w = self.world

        async def go() -> None:
            await w.drain()
            await w.stop_sink()
            await w.flush()
            reseeder = Reseeder(
                w.sink_client, w.store, nonce_window_s=nonce_window_s(w.settings), progress=Quiet()
            )
            await reseeder.run()
            await w.start_sink()

        w.run(go())

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def check(self) -> None:
        w = self.world
        for board in self.boards:
            w.run(self._check_live(board))
        w.run(w.drain())
        self._check_db()

    async def _check_live(self, board: str) -> None:
        scores = self.model[board]
        want = ranked(scores)
        raw: list[Any] = await self.world.redis.zrange(
            keys.BoardKeys(board).scores, 0, -1, withscores=True
        )
        assert [(m.decode(), int(-s)) for m, s in raw] == [(u, s) for _, u, s in want], board
        client = self.world.client
        for user in USERS:
            r = await client.get(f"/boards/{board}/scores/{user}")
            if user in scores:
                data = await r.json()
                assert r.status == 200, data
                assert (data["score"], data["rank"]) == (scores[user], rank_of(scores, user))
            else:
                assert r.status == 404
        # The top page is served from the process cache, which a reseed done by another
        # process refreshes through Pub/Sub: allow it a moment to arrive.
        expected = [{"rank": r, "userId": u, "score": s} for r, u, s in want]
        deadline = time.monotonic() + 3
        while True:
            r = await client.get(f"/boards/{board}/scores/top?limit=100")
            top = await r.json()
            if top["entries"] == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert top["entries"] == expected, (board, top, expected)
        assert top["version"] >= self.versions[board], "version went back"
        self.versions[board] = top["version"]

    def _check_db(self) -> None:
        db = self.world.db
        for board in self.boards:
            stored = {
                str(u): int(s)
                for u, s in db.execute(
                    "SELECT user_id, score FROM user_scores WHERE board_id = %s", (board,)
                ).fetchall()
            }
            assert stored == self.model[board], (board, stored, self.model[board])
            sums = {
                str(u): int(s)
                for u, s in db.execute(
                    "SELECT user_id, sum(delta) FROM score_events"
                    " WHERE board_id = %s AND user_id IS NOT NULL GROUP BY 1",
                    (board,),
                ).fetchall()
            }
            assert sums == self.model[board], (board, sums, self.model[board])
        ((events,),) = db.execute("SELECT count(*) FROM score_events").fetchall()
        assert events == self.accepted, (events, self.accepted)


def test_model_of_the_service(settings: Settings, redis_url: str, pg_url: str) -> None:
    loop = asyncio.new_event_loop()
    app_settings = settings_with(settings, database_url=pg_url, sink=False, rate_limit_per_min=0)

    async def open_world() -> World:
        store = await pg_store(pg_url)
        redis = aioredis.Redis.from_url(redis_url)
        client = TestClient(TestServer(create_app(app_settings)))
        await client.start_server()
        return World(
            loop=loop,
            settings=app_settings,
            redis_url=redis_url,
            pg_url=pg_url,
            client=client,
            redis=redis,
            sink_client=board_mod.connect(redis_url),
            store=store,
            db=psycopg.connect(pg_url, autocommit=True),
            claim=await redis.get(CLAIM_KEY),
        )

    world = loop.run_until_complete(open_world())
    ServiceModel.world = world
    Stats.examples = Stats.steps = 0
    Stats.by_rule.clear()
    started = time.monotonic()
    try:
        run_state_machine_as_test(ServiceModel, settings=SETTINGS)
    finally:

        async def close() -> None:
            await world.stop_sink()
            await world.client.close()
            await world.redis.aclose()
            await world.sink_client.aclose()
            await world.store.close()

        world.run(close())
        world.db.close()
        loop.close()
    print(
        f"\nhypothesis model: {Stats.examples} examples, {Stats.steps} steps,"
        f" 0 failures in {time.monotonic() - started:.1f} s; steps by rule: {Stats.by_rule}"
    )
    assert Stats.steps >= Stats.examples * 5, "the machine hardly ran"
