"""Running the application: aiohttp's runner, with every answer in the contract's terms.

aiohttp answers a request its HTTP parser refuses (a CR/LF or NUL in a header, a request
line or header past the limits, contradictory framing) with a plain-text 400 of its own,
before any middleware runs, and offers no hook to change it. The contract says every
response carries `X-Request-ID` and every error body is
`{"error", "message", "requestId"}`, so the connection handler here renders those
refusals itself. It is installed through a runner: `run_app` for the processes, `Runner`
wherever a test serves the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress

from aiohttp import web
from aiohttp.http_exceptions import (
    BadStatusLine,
    ContentLengthError,
    InvalidHeader,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import GracefulExit

from .. import logs
from .middleware import REQUEST_ID, new_id, render_error

logger = logging.getLogger(__name__)

# What the client is told, by the parser's exception (BadHttpMethod is a BadStatusLine):
# never the parser's own message, which quotes the offending bytes back.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (LineTooLong, "the request line or a header is longer than this server accepts"),
    (BadStatusLine, "the request line is not an HTTP/1.1 request line"),
    (InvalidHeader, "a header is malformed"),
    (TransferEncodingError, "the body's framing (Transfer-Encoding) is malformed"),
    (ContentLengthError, "the body's framing (Content-Length) is malformed"),
)


def _reason(exc: BaseException | None) -> str:
    for kind, text in _REASONS:
        if isinstance(exc, kind):
            return text
    return "the request is not well-formed HTTP/1.1"


class _ContractRequestHandler(RequestHandler):
    """aiohttp's connection handler; only its answer to refused requests differs."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # As aiohttp does: once a response has started, no second one can follow.
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; closing the connection")
        rid = new_id()
        if status >= 500:
            logger.error("error handling a request from %s", request.remote, exc_info=exc)
            code, text = "internal_error", "internal server error"
        else:
            # A client's mistake (or a scanner's garbage): worth a line, not a traceback.
            text = _reason(exc)
            code = "bad_request" if status == 400 else "error"
            fields = {
                "requestId": rid,
                "remote": request.remote,
                "status": status,
                "error": code,
                "reason": type(exc).__name__ if exc is not None else None,
            }
            logs.event(logs.SECURITY, f"malformed HTTP request: {text}", fields)
        response = render_error(status, code, text, rid)
        response.headers[REQUEST_ID] = rid
        response.force_close()
        return response


class _ContractServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ContractRequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """`web.AppRunner` whose connections answer parser refusals in the contract's terms."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application builds its own Server; this only swaps in the handler class
        # (the subclass adds no state).
        server.__class__ = _ContractServer
        return server


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    shutdown_timeout: float,
    listening: Callable[[], None] | None = None,
) -> None:
    """Serve `app` until SIGINT/SIGTERM, as `web.run_app` does, through `Runner`."""
    loop = asyncio.new_event_loop()

    async def main() -> None:
        runner = Runner(
            app, access_log=None, shutdown_timeout=shutdown_timeout, handle_signals=True
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
            if listening is not None:
                listening()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    task = loop.create_task(main())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(task)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
