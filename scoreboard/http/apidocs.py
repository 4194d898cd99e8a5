"""GET /openapi.json (rendered from `spec`) and GET /docs (a self-contained page that shows it)."""

from __future__ import annotations

from importlib import resources

import orjson
from aiohttp import web

from . import spec
from .state import SETTINGS

_DOCUMENT = web.AppKey("openapi_document", bytes)
_DOCS_PAGE = web.AppKey("docs_page", bytes)
# The page loads nothing but its own inline code and /openapi.json: no outside request.
_DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return web.Response(
        body=request.app[_DOCUMENT],
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def docs(request: web.Request) -> web.Response:
    """GET /docs."""
    return web.Response(
        body=request.app[_DOCS_PAGE],
        content_type="text/html",
        charset="utf-8",
        headers=_DOCS_HEADERS,
    )


def add_routes(app: web.Application) -> None:
    """The description routes; the document is rendered once, for this app's settings."""
    app[_DOCUMENT] = orjson.dumps(spec.document(app[SETTINGS]))
    app[_DOCS_PAGE] = resources.files("scoreboard").joinpath("static/docs.html").read_bytes()
    spec.register(app, "openapi", openapi)
    spec.register(app, "docs", docs)
