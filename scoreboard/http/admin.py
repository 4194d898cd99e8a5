"""Admin routes: erasing a user (DELETE /scores/{userId})."""

from __future__ import annotations

import logging

from aiohttp import web

from .. import logs
from ..errors import Forbidden, NotFound
from . import spec
from .middleware import request_id
from .scores import authenticate, board_id, path_user
from .state import BOARD, HUB

logger = logging.getLogger(__name__)


async def erase(request: web.Request) -> web.Response:
    """DELETE /scores/{userId}: erase the user from the live board; the sink erases the rest.

    The erasure goes through the board's stream like an increment, so the
    database forgets the user in the same order as everything else: the
    `user_scores` row is deleted and `score_events` keep the deltas without the
    user id.
    """
    board = board_id(request)
    principal = authenticate(request)
    if not principal.admin:
        raise Forbidden("erasing a user needs the scores:admin scope", reason="admin_scope")
    user_id = path_user(request)
    erased = await request.app[BOARD].erase(board, user_id)
    logs.event(
        logs.SECURITY,
        "erase",
        {
            "requestId": request_id(request),
            "boardId": board,
            "userId": user_id,
            "by": principal.user_id,
            "outcome": "ok" if erased else "not_found",
        },
    )
    if erased is None:
        raise NotFound("this user has no score on this board")
    request.app[HUB].note_version(board, erased.version)
    return web.Response(status=204)


def add_routes(app: web.Application, prefix: str) -> None:
    """The admin routes under `prefix` ('' or '/boards/{boardId}')."""
    spec.register(app, "erase", erase, prefix)
