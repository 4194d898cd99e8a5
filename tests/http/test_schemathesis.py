"""The API against its own /openapi.json: generated requests, every response checked against it.

The server runs on a loopback port in a thread of its own (schemathesis drives it over HTTP
with `requests`), on the test's Redis, with bounded example counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok

from scoreboard import auth
from scoreboard.config import Settings
from scoreboard.http.app import create_app

from ..conftest import Tokens, new_user
from .serving import NOT_ROUTED_YET, ServerThread

# Not generated against:
# - the live streams never end (SSE, WebSocket): a generated request would hang until the
#   client's timeout; the live tests cover them on the wire.
# - routes described but not routed on this branch yet (NOT_ROUTED_YET).
NOT_FUZZED = {
    ("GET", "/scores/stream"),
    ("GET", "/boards/{boardId}/scores/stream"),
    ("GET", "/scores/ws"),
    ("GET", "/boards/{boardId}/scores/ws"),
} | NOT_ROUTED_YET
MAX_EXAMPLES = 25


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    thread = ServerThread(create_app(settings)).start()
    try:
        yield thread
    finally:
        thread.stop()


def _with_valid_tokens(case: Any, tokens: Tokens, positive: bool) -> dict[str, str]:
    """A user JWT where the spec asks for one; a matching action token for a valid body.

    The caller holds both scopes, so an increment whose body the spec allows can succeed
    and its 200 is checked too; a body the spec forbids is left as generated.
    """
    if not case.operation.definition.raw.get("security"):
        return {}
    caller = new_user()
    body = case.body
    if case.operation.method.upper() == "POST" and isinstance(body, dict):
        user = auth.parse_uuid(body.get("userId"))
        delta = body.get("delta")
        if isinstance(delta, float) and delta.is_integer() and positive:
            # JSON Schema counts 2.0 as an integer; the contract does not (a float literal
            # is a 400), and no schema keyword can say so. Send the integer it means.
            delta = int(delta)
            body = {**body, "delta": delta}
        if user is not None and type(delta) is int and isinstance(body.get("actionToken"), str):
            caller = user
            nonce, token = tokens.action(user, delta, action="bonus")
            case.body = {**body, "actionToken": token}
            case.headers = {**(case.headers or {}), "X-Action-Nonce": nonce}
    # Passed as the call's explicit headers: schemathesis then knows the credentials are
    # real, and probes that the route refuses the request without them.
    return {"Authorization": f"Bearer {tokens.user(caller, 'scores:admin scores:bonus')}"}


def _operations(url: str) -> list[Any]:
    loaded = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    loaded.validate()  # the document itself is valid OpenAPI 3.1
    ops = []
    for result in loaded.get_all_operations():
        if not isinstance(result, Ok):
            pytest.fail(f"an operation the generator cannot use: {result.err()}")
        ops.append(result.ok())
    return [op for op in ops if (op.method.upper(), op.path) not in NOT_FUZZED]


# The schemathesis pytest plugin's lazy loader does not run under this pytest, so the
# generated cases are driven through the public strategy API instead.
@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_api_conforms_to_its_description(
    server: ServerThread, tokens: Tokens, mode: schemathesis.GenerationMode
) -> None:
    operations = _operations(server.url)
    assert len(operations) >= 10
    session = requests.Session()
    exercised = set()
    seen: set[tuple[str, int]] = set()
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        def check(case: Any) -> None:
            headers = _with_valid_tokens(case, tokens, mode.is_positive)
            response = case.call_and_validate(session=session, headers=headers, timeout=10)
            seen.add((case.operation.label, response.status_code))

        try:
            check()
        except Unsatisfiable:
            # Nothing of it can be made invalid (no parameters but free-form headers).
            assert not mode.is_positive, op.label
            continue
        exercised.add(op.label)
    session.close()
    # Every operation that takes input was exercised in both modes.
    for label in ("POST /scores/increment", "GET /scores/top", "GET /scores/{userId}/around"):
        assert label in exercised
    if mode.is_positive:
        # Valid bodies with minted tokens went through: the success bodies were checked too.
        assert ("POST /scores/increment", 200) in seen
        assert ("POST /boards/{boardId}/scores/increment", 200) in seen
        assert ("GET /scores/top", 200) in seen
    else:
        assert ("POST /scores/increment", 400) in seen
