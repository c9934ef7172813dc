"""The access log: one line per HTTP request, on the logger ``towtruck.server.access``.

A line is the client's address, the method and target, the status, the body's size
in bytes and the time from the request's head to its answer, at ``INFO``::

    127.0.0.1:50312 "POST /invoke/1/hello" 200 22 0.41ms

Whoever answers a request writes its line, once its answer is sent: the server's fast
lane (:mod:`towtruck.server.connection`) for ``/invoke``, ``/cluster/forward``, lanes and
requests the HTTP parser refuses; :meth:`AccessLog.serve` around the ASGI app for
everything else, and for every request when ``App`` is served by another server.
Hypercorn's own access log is not used: the fast lane answers without the Hypercorn
stream that writes it, and that stream writes a second line, with no status, for a
request whose client closes the connection as soon as it has the answer (as curl
does: the close is read while the end of the body is being sent).

With the access log off nothing here runs. The fast lane picks its protocol, logging
or not, once per connection; the ASGI app checks one attribute per request.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)

__all__ = ["AccessLog", "LoggedSend"]

logger = logging.getLogger("towtruck.access")

_FORMAT: Final = '%s "%s %s" %s %d %.2fms'


class AccessLog:
    """Writes the access log's lines (see the module's docstring)."""

    def __init__(self) -> None:
        self._shown = False

    def show(self) -> None:
        """Make sure the lines are seen: the logger logs ``INFO`` unless a level was
        set for it, and if no handler would take its records (a program that set up no
        logging, such as the ``hypercorn`` command), they go to stderr, as Hypercorn's
        own logs do. Called when the app starts serving; does something once."""
        if self._shown:
            return
        self._shown = True
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        if not logger.hasHandlers():
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
            )
            logger.addHandler(handler)

    def log(
        self,
        client: str,
        method: str,
        target: str,
        status: int | str,
        size: int,
        started: float,
    ) -> None:
        """Write one request's line. ``started``: when its head arrived, on trio's
        clock; ``status``: ``"-"`` if it got no answer (its client left first)."""
        elapsed = (trio.current_time() - started) * 1000
        logger.info(_FORMAT, client, method, target, status, size, elapsed)

    async def serve(
        self,
        app: Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]],
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
    ) -> None:
        """Run the ASGI ``app`` for one request (its send wrapped in a
        :class:`LoggedSend`) and log it once the app is done, answered or not. For
        the app's lifespan, :meth:`show` the lines first, and log nothing. A
        checkpoint."""
        logged = LoggedSend(send)
        if scope["type"] != "http":
            self.show()
            await app(scope, receive, logged)
            return
        started = trio.current_time()
        try:
            await app(scope, receive, logged)
        finally:
            size = 0 if scope["method"] == "HEAD" else logged.size  # the server drops it
            self.log(_client(scope), scope["method"], _target(scope), logged.status, size, started)


class LoggedSend:
    """An ASGI ``send`` that notes the status and body size it passes on; an app that
    is called with one knows its request is being logged already."""

    def __init__(self, send: ASGISendCallable) -> None:
        self._send = send
        #: The response's status, or "-" while none was sent.
        self.status: int | str = "-"
        #: The body's bytes sent so far.
        self.size = 0

    async def __call__(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.size += len(message.get("body", b""))
        await self._send(message)


def _client(scope: HTTPScope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _target(scope: HTTPScope) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    query = scope["query_string"]
    return f"{path}?{query.decode('latin-1')}" if query else path
