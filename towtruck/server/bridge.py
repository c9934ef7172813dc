"""The routes towtruck's server does not answer itself, answered by the Quart-Trio app
through ASGI, and the app's lifespan.

Quart-Trio serves the HTTP surface (``/health``, ``/addserver`` and the rest): its
routing, request parsing and error handlers stay what they are under any ASGI server.
The bridge hands it one request at a time, as :mod:`towtruck.server.connection` read it (the
whole body at once: every route takes a small JSON body, or none). It is not a general
ASGI server: no streamed request bodies, no websockets, no HTTP/2.

An answer is gathered whole and written in one piece, with its ``content-length``,
unless it is a stream: an answer that declares no ``content-length`` and whose body
comes in several ASGI messages (``more_body: True``), as ``/dashboard/events`` does.
Quart sends every body so, a whole one too (its parts, then an empty last one), so
``more_body`` alone cannot tell; Quart sets ``content-length`` on every body it holds
whole, and leaves it out only for a body it iterates. A stream is written as it comes,
through the connection's :class:`Streamer` (chunked, or delimited by the connection's
close). Its request's ``receive()`` answers ``http.disconnect`` once the server stops,
so the app ends it (the dashboard ends its own streams sooner, when the node's runtime
stops); a stream cut so, or by a failure, closes the connection without the last chunk,
so its client can tell it was cut.

:func:`open_lifespan` runs the app's lifespan (``startup`` before the first request,
``shutdown`` after the last), as an ASGI server would: Quart-Trio opens the nursery its
background work runs in there, and runs the app's ``before_serving`` and
``after_serving`` hooks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol
from urllib.parse import unquote

import trio

from .. import codec
from ..errors import InternalError
from .parser import Request

__all__ = ["Bridge", "Streamer", "open_lifespan"]

logger = logging.getLogger("towtruck.http")

#: An ASGI application: ``await app(scope, receive, send)``.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

_ASGI: Final = {"version": "3.0", "spec_version": "2.3"}
# Headers the connection writes itself.
_OWN_HEADERS: Final = frozenset({b"date", b"content-length", b"transfer-encoding", b"connection"})
# Answers that carry no body, so are never streams.
_BODILESS: Final = frozenset({204, 304})


class Streamer(Protocol):
    """Where an answer that is a stream goes, part by part (the connection's
    :class:`~towtruck.server.connection.StreamedAnswer`). Each call is a checkpoint;
    a write that the client does not take within the server's ``request_timeout``
    raises :class:`trio.BrokenResourceError`, as does a client gone."""

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Write the answer's head."""
        ...

    async def write(self, data: bytes) -> None:
        """Write a part of the body (not for ``HEAD``: it writes nothing then)."""
        ...

    async def end(self) -> None:
        """Write the end of the body: the answer is complete."""
        ...

    async def wait_stopping(self) -> None:
        """Wait until the server stops (the stream must then end)."""
        ...


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

    async def answer(
        self, request: Request, client: str, server: str, streamer: Streamer
    ) -> Answer | None:
        """Run the app for ``request``; return its answer's status, headers (with its
        ``content-length``) and whole body, or None if the answer was a stream, written
        through ``streamer`` (whole, or cut: ``streamer`` knows which). An app that
        fails, or answers nothing, answers 500 in JSON (a stream it fails in is cut).
        A checkpoint."""
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
        streaming = trio.Event()

        async def receive() -> dict[str, Any]:
            if body:
                return {"type": "http.request", "body": body.pop(), "more_body": False}
            # Quart-Trio waits here, and cancels the wait once it has answered. A whole
            # answer is left to finish when the server stops (within its
            # shutdown_timeout); a stream is told its client is gone, and ends.
            await streaming.wait()
            await streamer.wait_stopping()
            return {"type": "http.disconnect"}

        status: int | None = None
        headers: list[tuple[bytes, bytes]] = []
        declared = False  # the app gave a content-length: a whole answer
        chunks: list[bytes] = []
        head_only = request.method == b"HEAD"
        app_scope = trio.CancelScope()

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, declared
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    name = bytes(name).lower()
                    declared = declared or name == b"content-length"
                    if name not in _OWN_HEADERS:
                        headers.append((name, bytes(value)))
            elif kind == "http.response.body":
                chunk = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if streaming.is_set():
                    await _stream_part(chunk, more)
                elif more and not declared and status is not None and status not in _BODILESS:
                    streaming.set()
                    await streamer.start(status, headers)
                    if head_only:  # the head is the whole answer: stop the app
                        app_scope.cancel()
                        return
                    await _stream_part(b"".join((*chunks, chunk)), more)
                else:
                    chunks.append(chunk)

        async def _stream_part(chunk: bytes, more: bool) -> None:
            if chunk:
                await streamer.write(chunk)
            if not more:
                await streamer.end()

        with app_scope:
            try:
                await self._app(scope, receive, send)
            except Exception as exc:
                if streaming.is_set():  # cut: the connection closes without the end
                    if not _client_gone(exc):
                        logger.error("a streamed answer failed", exc_info=exc)
                    return None
                return _failure(f"towtruck failed answering this request: {type(exc).__name__}")
        if streaming.is_set():
            if head_only:
                await streamer.end()
            return None
        if status is None:
            return _failure("the app answered nothing")
        answer = b"".join(chunks)
        headers.append((b"content-length", str(len(answer)).encode()))
        return status, headers, answer


def _client_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group) says the client went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, OSError))


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
