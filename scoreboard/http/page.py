"""The live leaderboard page: `GET /` and its static files, served from memory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from ..errors import NotFound
from . import spec

# Everything the page loads comes from this server; it contacts nothing else.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    "index.html": "text/html",
    "app.css": "text/css",
    "app.js": "text/javascript",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _load() -> dict[str, _Asset]:
    folder = resources.files("scoreboard").joinpath("static")
    assets = {}
    for name, content_type in _TYPES.items():
        body = folder.joinpath(name).read_bytes()
        etag = '"' + hashlib.blake2s(body, digest_size=8).hexdigest() + '"'
        assets[name] = _Asset(body, content_type, etag)
    return assets


_ASSETS = _load()


def _serve(request: web.Request, name: str) -> web.Response:
    asset = _ASSETS.get(name)
    if asset is None:
        raise NotFound("no such file")
    headers = {
        "ETag": asset.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _CSP,
        "Referrer-Policy": "no-referrer",
    }
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
    )


async def index(request: web.Request) -> web.Response:
    """GET /: the live top-10 page."""
    return _serve(request, "index.html")


async def static(request: web.Request) -> web.Response:
    """GET /static/{name}: the page's stylesheet and script."""
    name = request.match_info["name"]
    if name == "index.html":
        raise NotFound("no such file")
    return _serve(request, name)


def add_routes(app: web.Application) -> None:
    spec.register(app, "page", index)
    spec.register(app, "static", static)
