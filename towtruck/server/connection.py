"""One HTTP/1.1 connection to a server towtruck starts: read, answered, and kept alive.

towtruck reads and answers its connections itself, rather than through an ASGI server,
because on its hot path the server was the cost: with Hypercorn, h11 and the ASGI
machinery took two thirds of an ``/invoke`` request, the actor call a sixth. Here a
connection is one task that reads, parses (:mod:`towtruck.server.parser`: llhttp through
httptools), and answers one request at a time, in order (HTTP/1.1 answers pipelined
requests in the order they came), each answer in one write:

- ``/invoke/...`` and ``POST /cluster/forward`` go straight to the app's
  :meth:`~towtruck.App.respond`;
- ``GET /cluster/lane`` with ``Upgrade: towtruck-lane`` is answered ``101``, and the
  connection becomes a lane (:mod:`towtruck.transport.lanes`);
- every other route goes to the Quart-Trio app, through :mod:`towtruck.server.bridge`, with the
  whole body at once. Its answer is one write too, unless the app streams it (an event
  stream, ``/dashboard/events``): then each part is written as it comes
  (:class:`StreamedAnswer`).

Reads and writes go through :mod:`towtruck.transport.sockets`, with trio's scheduler entered only
where a read must wait. A connection notes when it went idle and when a body began to
arrive; the server's reaper (:func:`reap_idle`) closes those idle past
``keep_alive_timeout`` or slow past ``request_timeout``, without a timer per request.
"""

from __future__ import annotations

import http
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Protocol
from wsgiref.handlers import format_date_time

import trio

from .. import codec
from ..cluster.wire import LANE_PATH, UPGRADE
from ..errors import InternalError, TowtruckError
from ..transport import sockets
from .access import AccessLog
from .parser import Request, Unreadable, Upgraded, open_parser

__all__ = ["Connection", "Routes", "Server", "StreamedAnswer", "reap_idle"]

logger = logging.getLogger("towtruck.http")

_READ_SIZE: Final = 64 * 1024
# A request refused before its body was read (too large) is answered, then the
# connection reads and drops what the client still sends, up to these bounds, before
# closing: closing with unread data makes the kernel reset the connection, and the
# client may lose the answer it was sent (a "lingering close", as nginx does).
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 4 * 1024 * 1024
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_SWITCH: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: " + UPGRADE + b"\r\n\r\n"
)
_CLOSE: Final = (b"connection", b"close")

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class Routes(Protocol):
    """What a connection answers with (:class:`towtruck.App`)."""

    max_body: int
    access_log: AccessLog | None

    def is_fast(self, verb: str, raw_path: bytes) -> bool:
        """Whether a request goes to a fast route (``/invoke``, ``/cluster/forward``)."""
        ...

    async def respond(
        self,
        verb: str,
        raw_path: bytes,
        body: bytes,
        error: TowtruckError | None = None,
        *,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> Answer:
        """Status, headers and body of a fast route's answer (``error``: that instead)."""
        ...

    def check_cluster_key(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Raise :class:`Unauthorized` or :class:`Forbidden` unless the request carries
        the cluster key (when one is set)."""
        ...

    async def serve_lane(
        self,
        stream: trio.SocketStream,
        initial: bytes,
        stopping: Callable[[], Awaitable[object]],
    ) -> None:
        """Answer calls on a connection upgraded to a lane until the peer closes it or
        ``stopping()`` returns."""
        ...


class Bridge(Protocol):
    """Answers the routes that are not fast (:class:`towtruck.server.bridge.Bridge`)."""

    async def answer(
        self, request: Request, client: str, server: str, streamer: StreamedAnswer
    ) -> Answer | None:
        """Status, headers and body of the app's answer to ``request``, or None if the
        answer was a stream, written through ``streamer``."""
        ...


class Server:
    """What the connections of one server share.

    Attributes:
        routes: The app's fast routes.
        bridge: The app's other routes.
        connections: The connections open now.
        request_timeout: Longest a client may take to send a body, or read an answer.
        parser: The ``http_parser`` setting: which parser reads requests.
        stopping: Set when the server stops: connections finish the request they are
            answering, then close.
    """

    def __init__(
        self, routes: Routes, bridge: Bridge, *, request_timeout: float, parser: str = "auto"
    ) -> None:
        self.routes = routes
        self.bridge = bridge
        self.request_timeout = request_timeout
        self.parser = parser
        self.connections: set[Connection] = set()
        self.stopping = trio.Event()


class Connection:
    """One connection's task: see the module's docstring. ``await connection.run()``
    serves it until the client closes it, the server closes it, or it breaks; the
    socket is closed on the way out, whatever happens."""

    __slots__ = (
        "_client",
        "_linger",
        "_server",
        "_stream",
        "idle_since",
        "receiving_since",
    )

    def __init__(self, stream: trio.SocketStream, server: Server) -> None:
        self._stream = stream
        self._server = server
        self._client = "-"
        self._linger = False
        #: When the connection went idle (between requests, or with only part of a
        #: request's head in), on trio's clock; None while it answers or reads a body.
        self.idle_since: float | None = trio.current_time()
        #: When the body being read began to arrive, or None.
        self.receiving_since: float | None = None

    def close_if_quiet(self) -> None:
        """Close the socket at once unless bytes are waiting to be read: closing with a
        request unread would reset the connection, and its client could not tell that
        request from one that ran. For the reaper and a stopping server. Not a
        checkpoint."""
        if not sockets.readable_now(self._stream):
            self._stream.socket.close()

    def excuse(self, stall: float) -> None:
        """Count ``stall`` seconds, when the process did not run, as neither idle nor
        receiving time (see :func:`reap_idle`)."""
        if self.idle_since is not None:
            self.idle_since += stall
        if self.receiving_since is not None:
            self.receiving_since += stall

    async def run(self) -> None:
        server = self._server
        server.connections.add(self)
        try:
            self._client = _address(self._stream.socket.getpeername())
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away, or the reaper closed the connection
        except Exception:  # a bug, but one connection must never take the server down
            logger.exception("closing a connection after an unexpected error")
        finally:
            server.connections.discard(self)
            try:
                if self._linger:
                    await self._drain()
            finally:  # even when cancelled (a node killed)
                self._stream.socket.close()

    async def _serve(self) -> None:
        server = self._server
        routes = server.routes
        stream = self._stream
        parser = open_parser(routes.max_body, server.parser)
        requests = parser.requests
        drained = True
        answered = False  # it just wrote an answer
        continued: Request | None = None  # the request told "100 Continue"
        while True:
            while not requests:
                if server.stopping.is_set() and not parser.receiving:
                    return
                data = await sockets.receive(
                    stream, _READ_SIZE, drained=drained, yield_first=answered
                )
                drained, answered = len(data) < _READ_SIZE, False
                if not await self._parse(parser.feed, data):
                    return
                if not data:
                    return  # the client closed, between requests
                waiting = parser.waiting
                if waiting is None:
                    self.receiving_since = None
                    continue
                self.idle_since = None
                if self.receiving_since is None:
                    self.receiving_since = trio.current_time()
                if waiting.expects_continue and waiting is not continued:
                    continued = waiting
                    await self._write(_CONTINUE)
            request = requests.popleft()
            self.idle_since = self.receiving_since = None
            if not await self._answer(request):
                return
            answered = True
            self.idle_since = trio.current_time()
            if not await self._parse(parser.answered):
                return

    async def _parse(self, step: Callable[..., None], *data: bytes) -> bool:
        """Run a step of the parser; False if that ended the connection's HTTP (a
        request refused, or one that switched protocols), once that is handled."""
        try:
            step(*data)
        except Unreadable as refused:
            await self._refuse(refused)
            return False
        except Upgraded as upgraded:
            await self._upgrade(upgraded.request, upgraded.rest)
            return False
        return True

    async def _answer(self, request: Request) -> bool:
        """Answer ``request``; returns whether the connection stays open."""
        server = self._server
        routes = server.routes
        verb = request.method.decode("latin-1")
        path = request.path
        log = routes.access_log
        started = trio.current_time() if log is not None else 0.0
        try:
            if routes.is_fast(verb, path):
                status, headers, body = await routes.respond(
                    verb, path, request.body, headers=request.headers
                )
            else:
                streamer = StreamedAnswer(self, request)
                answer = await server.bridge.answer(
                    request, self._client, _server_address(self._stream), streamer
                )
                if answer is None:
                    return self._streamed(request, streamer, started)
                status, headers, body = answer
        except Exception as exc:  # a bug; the client still gets a JSON answer
            logger.exception("error answering %s %r", verb, request.target)
            error = InternalError(f"towtruck failed answering this request: {type(exc).__name__}")
            status, headers, body = codec.error_answer(error)
        keep_alive = request.keep_alive and not server.stopping.is_set()
        if not keep_alive:
            headers.append(_CLOSE)
        await self._write(_head(status, headers) + (b"" if verb == "HEAD" else body))
        if log is not None:
            size = 0 if verb == "HEAD" else len(body)
            log.log(self._client, verb, request.target.decode("latin-1"), status, size, started)
        return keep_alive

    def _streamed(self, request: Request, streamer: StreamedAnswer, started: float) -> bool:
        """Log a streamed answer; returns whether the connection stays open (only after
        a complete answer whose end was marked, with the server not stopping)."""
        log = self._server.routes.access_log
        if log is not None:
            method, target = request.method.decode("latin-1"), request.target.decode("latin-1")
            log.log(self._client, method, target, streamer.status, streamer.size, started)
        return streamer.complete and streamer.chunked and not self._server.stopping.is_set()

    async def _upgrade(self, request: Request, rest: bytes) -> None:
        """A request that asked to switch protocols: a lane if it asks for one (and
        carries the cluster key), else answered as an ordinary request, and closed."""
        routes = self._server.routes
        if request.path != LANE_PATH or request.method != b"GET" or request.upgrade != UPGRADE:
            request.keep_alive = False
            await self._answer(request)
            return
        try:
            routes.check_cluster_key(request.headers)
        except TowtruckError as exc:
            status, headers, body = codec.error_answer(exc.with_traceback(None))
            headers.append(_CLOSE)
            await self._write(_head(status, headers) + body)
            self._log(request, status, len(body))
            return
        await self._write(_SWITCH)
        self._log(request, 101, 0)
        self.idle_since = None
        await routes.serve_lane(self._stream, rest, self._server.stopping.wait)

    async def _refuse(self, refused: Unreadable) -> None:
        """Answer a request that cannot be read (or broke a limit), and close."""
        request = refused.request
        if request is not None and self._server.routes.is_fast(
            request.method.decode("latin-1"), request.path
        ):
            status, headers, body = await self._server.routes.respond(
                request.method.decode("latin-1"), request.path, b"", refused.error
            )
        else:
            status, headers, body = codec.error_answer(refused.error)
        headers.append(_CLOSE)
        self._linger = True  # the client may still be sending: see _LINGER_*
        await self._write(_head(status, headers) + body)
        if request is not None:
            self._log(request, status, len(body))
        elif self._server.routes.access_log is not None:
            self._server.routes.access_log.log(
                self._client, "-", "-", status, len(body), trio.current_time()
            )

    def _log(self, request: Request, status: int, size: int) -> None:
        log = self._server.routes.access_log
        if log is not None:
            method = request.method.decode("latin-1")
            log.log(
                self._client,
                method,
                request.target.decode("latin-1"),
                status,
                size,
                trio.current_time(),
            )

    async def _write(self, data: bytes) -> None:
        """Send ``data`` now: what the socket takes at once, the rest within
        ``request_timeout`` (a client that does not read its answers is cut off)."""
        sent = sockets.send_now(self._stream, data)
        if sent < len(data):
            with trio.move_on_after(self._server.request_timeout) as scope:
                await self._stream.send_all(data[sent:])
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("the client does not read its answers")

    async def _drain(self) -> None:
        """Read and drop what the client still sends, for a moment (see _LINGER_*)."""
        with trio.move_on_after(_LINGER_SECONDS):
            try:
                await self._stream.send_eof()
                left = _LINGER_BYTES
                while left > 0 and (data := await self._stream.receive_some(_READ_SIZE)):
                    left -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


class StreamedAnswer:
    """An answer written as the app sends it, part by part (the bridge's
    :class:`~towtruck.server.bridge.Streamer`): an event stream, whose end nobody knows
    when its head is written.

    With ``transfer-encoding: chunked`` when the client keeps the connection alive,
    else delimited by the connection's close (what a client that said
    ``connection: close``, or an HTTP/1.0 one, reads). Each part is one write, bounded
    by the server's ``request_timeout`` like any answer (a client that stops reading
    is cut off). An answer that ends without :meth:`end` (cut by a failure, or by the
    server stopping) leaves ``complete`` false, and the connection closes without the
    last chunk: its client sees the answer cut, not complete.
    """

    __slots__ = ("_connection", "_head_only", "chunked", "complete", "size", "status")

    def __init__(self, connection: Connection, request: Request) -> None:
        self._connection = connection
        self._head_only = request.method == b"HEAD"
        #: Framed in chunks (else delimited by the close).
        self.chunked = (
            request.keep_alive and not request.http10 and not connection._server.stopping.is_set()
        )
        #: The answer's status, once its head is written.
        self.status = 0
        #: Bytes of body written.
        self.size = 0
        #: Its end is written: the client has the whole answer.
        self.complete = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Write the head. A checkpoint."""
        self.status = status
        framing = (b"transfer-encoding", b"chunked") if self.chunked else _CLOSE
        await self._connection._write(_head(status, [*headers, framing]))

    async def write(self, data: bytes) -> None:
        """Write ``data`` as one part of the body. A checkpoint, if there is anything
        to write."""
        if self._head_only or not data:
            return
        self.size += len(data)
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        await self._connection._write(data)

    async def end(self) -> None:
        """Write the body's end (the last, empty chunk). A checkpoint."""
        if self.chunked and not self._head_only:
            await self._connection._write(b"0\r\n\r\n")
        self.complete = True

    async def wait_stopping(self) -> None:
        """Wait until the server stops (see :attr:`Server.stopping`)."""
        await self._connection._server.stopping.wait()


async def reap_idle(
    connections: set[Connection], keep_alive_timeout: float, request_timeout: float
) -> None:
    """Close, for ever, the connections idle longer than ``keep_alive_timeout`` (a
    request's head still arriving counts as idle: a client that trickles it is cut off
    too), and those that took longer than ``request_timeout`` to send a request's body.
    Checks four times per timeout, at most once a second.

    A stall of the process (stopped, or held by code that does not yield) is not idle
    time: a check that comes more than a tick late moves every connection's clock on
    by the delay. Without that, the check after a long stall closed every keep-alive
    connection, with the requests clients had sent on them meanwhile unread, and the
    kernel answered those with a reset: the clients could not tell them from calls
    that ran. For the same reason a connection with bytes waiting to be read (a
    request, or the client's close) is left to its reader, never closed here.
    """
    tick = min(1.0, keep_alive_timeout / 4, request_timeout / 4)
    due = trio.current_time() + tick
    while True:
        await trio.sleep_until(due)
        now = trio.current_time()
        stall = now - due
        if stall > tick:
            for connection in connections:
                connection.excuse(stall)
        for connection in list(connections):
            idle, receiving = connection.idle_since, connection.receiving_since
            if (idle is not None and now - idle >= keep_alive_timeout) or (
                receiving is not None and now - receiving >= request_timeout
            ):
                connection.close_if_quiet()
        due = now + tick


_STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode()
    for status in http.HTTPStatus
}


def _head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The status line and headers of an answer, and the blank line after them."""
    line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n".encode()
    parts = [line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (b"date: ", _date(), b"\r\n\r\n")
    return b"".join(parts)


def _server_address(stream: trio.SocketStream) -> str:
    return _address(stream.socket.getsockname())


def _address(address: Any) -> str:
    """``host:port`` of a socket's address (a Unix domain socket's: its path, or
    ``-`` for an unnamed one)."""
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address or "-")


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    """The ``Date`` header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_date_time(now).encode("ascii"))
    return _date_cache[1]
