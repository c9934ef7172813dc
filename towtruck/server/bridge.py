"""The routes towtruck's server does not answer itself, answered by the Quart-Trio app
through ASGI, and the app's lifespan.

Quart-Trio serves the HTTP surface (``/health``, ``/addserver`` and the rest): its
routing, request parsing and error handlers stay what they are under any ASGI server.
The bridge hands it one request at a time, as :mod:`towtruck.server.connection` read it (the
whole body at once: every route takes a small JSON body, or none), and gathers the whole
answer before the connection writes it in one piece. It is not a general ASGI server:
no streamed bodies, no websockets, no HTTP/2.

:func:`open_lifespan` runs the app's lifespan (``startup`` before the first request,
``shutdown`` after the last), as an ASGI server would: Quart-Trio opens the nursery its
background work runs in there, and runs the app's ``before_serving`` and
``after_serving`` hooks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import unquote

import trio

from .. import codec
from ..errors import InternalError
from .parser import Request

__all__ = ["Bridge", "open_lifespan"]

#: An ASGI application: ``await app(scope, receive, send)``.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

_ASGI: Final = {"version": "3.0", "spec_version": "2.3"}
# Headers the connection writes itself.
_OWN_HEADERS: Final = frozenset({b"date", b"content-length", b"transfer-encoding", b"connection"})


class Bridge:
    """Answers requests with an ASGI app (see the module's docstring).

    Args:
        app: The ASGI app (the node's Quart-Trio app).
        state: The lifespan's state, handed to each request's scope (ASGI's
            ``scope["state"]``).
    """

    def __init__(self, app: ASGIApp, state: dict[str, Any] | None = None) -> None:
        self._app = app
        self.state = state if state is not None else {}

    async def answer(self, request: Request, client: str, server: str) -> Answer:
        """Run the app for ``request``; return its answer's status, headers (with its
        ``content-length``) and whole body. An app that fails, or answers nothing,
        answers 500 in JSON. A checkpoint."""
        raw_path = request.path
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1",
            "method": request.method.decode("latin-1"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": _address(client),
            "server": _address(server),
            "state": dict(self.state),
        }
        body: list[bytes] = [request.body]
        gone = trio.Event()  # never set: the request is answered before its client goes

        async def receive() -> dict[str, Any]:
            if body:
                return {"type": "http.request", "body": body.pop(), "more_body": False}
            await gone.wait()  # Quart-Trio waits here, and cancels it once it answered
            return {"type": "http.disconnect"}

        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers.extend(
                    (bytes(name).lower(), bytes(value))
                    for name, value in message.get("headers", ())
                    if bytes(name).lower() not in _OWN_HEADERS
                )
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        try:
            await self._app(scope, receive, send)
        except Exception as exc:
            return _failure(f"towtruck failed answering this request: {type(exc).__name__}")
        if status is None:
            return _failure("the app answered nothing")
        answer = b"".join(chunks)
        headers.append((b"content-length", str(len(answer)).encode()))
        return status, headers, answer


def _failure(message: str) -> Answer:
    return codec.error_answer(InternalError(message))


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


@asynccontextmanager
async def open_lifespan(app: ASGIApp, *, shutdown_timeout: float) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s ASGI lifespan around the block: ``startup`` before it (the block is
    entered once the app has started), ``shutdown`` after it, given
    ``shutdown_timeout`` seconds. Yields the lifespan's state.

    Raises:
        RuntimeError: the app failed to start (its message says why).
    """
    state: dict[str, Any] = {}
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](2)
    started, stopped = trio.Event(), trio.Event()
    failure: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup."):
            if kind.endswith(".failed"):
                failure.append(str(message.get("message", "")))
            started.set()
        elif kind.startswith("lifespan.shutdown."):
            stopped.set()

    async def run() -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": state}
        try:
            await app(scope, from_server.receive, send)
        finally:  # an app that ends its lifespan early (or takes none) blocks nothing
            started.set()
            stopped.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await to_app.send({"type": "lifespan.startup"})
        await started.wait()
        if failure:
            raise RuntimeError(f"the app failed to start: {failure[0]}")
        try:
            yield state
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(shutdown_timeout):
                    await to_app.send({"type": "lifespan.shutdown"})
                    await stopped.wait()
            nursery.cancel_scope.cancel()
