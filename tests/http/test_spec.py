"""The API description: one list of operations, the router and /openapi.json agree with it."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient

from scoreboard.config import Settings
from scoreboard.http import spec
from scoreboard.http.app import create_app

from ..conftest import settings_with
from .serving import NOT_ROUTED_YET, ServerThread

# Contract section 4, every route; each also under /boards/{boardId} where marked.
CONTRACT_ROUTES = [
    ("POST", "/scores/increment", True),
    ("GET", "/scores/top", True),
    ("GET", "/scores/{userId}", True),
    ("GET", "/scores/{userId}/around", True),
    ("DELETE", "/scores/{userId}", True),
    ("GET", "/scores/stream", True),
    ("GET", "/scores/ws", True),
    ("GET", "/", False),
    ("GET", "/metrics", False),
    ("GET", "/healthz", False),
    ("GET", "/readyz", False),
    ("GET", "/openapi.json", False),
]


def router_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the app answers, HEAD aside."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if route.method != "HEAD" and path:
            out.add((route.method, path))
    return out


@pytest.fixture
async def document(client: TestClient[Any, Any]) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    doc: dict[str, Any] = await r.json()
    return doc


def test_router_and_description_agree(settings: Settings) -> None:
    routed = router_routes(create_app(settings))
    described = spec.routes()
    assert routed - described == set(), "routes without a description"
    # What is described and not routed is exactly what has not landed yet.
    assert described - routed == NOT_ROUTED_YET


def test_every_contract_route_is_described() -> None:
    described = spec.routes()
    for method, path, boards in CONTRACT_ROUTES:
        assert (method, path) in described
        if boards:
            assert (method, "/boards/{boardId}" + path) in described


async def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()
    paths = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert paths == spec.routes()
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def _responses(document: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                yield method.upper(), path, status, response


async def test_every_error_status_has_the_error_body(document: dict[str, Any]) -> None:
    for method, path, status, response in _responses(document):
        headers = response["headers"]
        assert "X-Request-ID" in headers, (method, path, status)
        if int(status) < 400 or path == "/readyz":
            continue
        (schema,) = [c["schema"] for c in response["content"].values()]
        assert schema["$ref"] in (
            "#/components/schemas/Error",
            "#/components/schemas/Replay",
        ), (method, path, status)
        if status == "401":
            assert "WWW-Authenticate" in headers
        if status in ("429", "503"):
            assert "Retry-After" in headers


async def test_increment_describes_the_contract_table(document: dict[str, Any]) -> None:
    op = document["paths"]["/scores/increment"]["post"]
    assert set(op["responses"]) == {
        "200", "400", "401", "403", "409", "413", "415", "422", "429", "500"
    }  # fmt: skip
    assert op["security"] == [{"bearer": []}]
    params = {p.get("name") or p["$ref"].rsplit("/", 1)[1]: p for p in op["parameters"]}
    assert params["X-Action-Nonce"]["in"] == "header" and params["X-Action-Nonce"]["required"]
    assert "X-Request-ID" in params
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/IncrementRequest"}
    request = document["components"]["schemas"]["IncrementRequest"]
    assert set(request["required"]) == {"userId", "delta", "actionToken"}
    assert request["additionalProperties"] is False
    replay = op["responses"]["409"]["content"]["application/json"]["schema"]
    assert replay == {"$ref": "#/components/schemas/Replay"}
    board = document["paths"]["/boards/{boardId}/scores/increment"]["post"]
    assert "404" in board["responses"]
    assert board["parameters"][0] == {"$ref": "#/components/parameters/boardId"}


async def test_top_describes_etags_and_paging(document: dict[str, Any]) -> None:
    op = document["paths"]["/scores/top"]["get"]
    assert op["security"] == []
    names = {p.get("name") for p in op["parameters"]}
    assert {"limit", "offset", "If-None-Match"} <= names
    assert "ETag" in op["responses"]["200"]["headers"]
    assert "ETag" in op["responses"]["304"]["headers"]
    assert "content" not in op["responses"]["304"]


async def test_delta_bounds_follow_the_settings(aiohttp_client: Any, settings: Settings) -> None:
    client = await aiohttp_client(
        create_app(settings_with(settings, max_delta=7, max_bonus_delta=70))
    )
    doc = await (await client.get("/openapi.json")).json()
    delta = doc["components"]["schemas"]["IncrementRequest"]["properties"]["delta"]
    assert (delta["minimum"], delta["maximum"], delta["not"]) == (-70, 70, {"const": 0})


def test_register_refuses_a_board_route_that_is_not_described() -> None:
    app = web.Application()
    with pytest.raises(ValueError, match="healthz"):
        spec.register(app, "healthz", lambda r: None, "/boards/{boardId}")  # type: ignore[arg-type,return-value]


async def test_docs_page_is_self_contained(client: TestClient[Any, Any]) -> None:
    r = await client.get("/docs")
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    html = await r.text()
    # Nothing to fetch from anywhere else: no absolute URL in any attribute or fetch.
    assert not re.search(r"""(src|href|fetch\()\s*=?\s*["']?(https?:)?//""", html)
    assert 'fetch("openapi.json"' in html


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_docs_page_renders_every_operation(settings: Settings) -> None:
    """The page in a real browser: every operation of the document becomes a section."""
    if CHROMIUM is None:
        pytest.fail(
            "this test needs the distribution's chromium package (apt-get install chromium)"
        )
    server = ServerThread(create_app(settings)).start()
    try:
        dom = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--virtual-time-budget=5000", "--dump-dom", f"{server.url}/docs",
            ],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    finally:
        server.stop()
    assert 'id="error"' not in dom
    for op_id in ("increment", "incrementBoard", "top", "erase", "stream", "readyz", "docs"):
        assert f'<section class="op" id="{op_id}">' in dom, op_id
    assert "IncrementRequest" not in dom or "actionToken" in dom
    assert "actionToken?" not in dom and "actionToken: string" in dom
