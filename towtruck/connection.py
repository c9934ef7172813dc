"""One HTTP connection on Hypercorn's trio worker, with its per-request costs cut.

Written against Hypercorn 0.18 (``pyproject.toml`` pins ``hypercorn>=0.18,<0.19`` and a
test checks the pin). Every piece replaces one part of Hypercorn's ``TCPServer`` and
``H11Protocol`` and is small enough to send upstream:

**Keep-alive timeouts without a timer per request.** Hypercorn restarts a connection's
keep-alive timer after each response by spawning a task (``nursery.start``, a lock, a
cancel scope) from inside the app's ``send``. Quart-Trio calls ``send`` from its
per-request nursery and cancels that nursery as soon as the response is out, which
cancels the timer before it starts: an idle keep-alive connection then stays open for
ever. Here a connection only notes when it became idle; one reaper task per server
(:func:`reap_idle`) closes the connections idle past ``keep_alive_timeout``, a few
times a second. A per-connection deadline would do too, but moving it twice per
request costs more than the reaper's sweep.

**Fast routes skip ASGI.** For each request Hypercorn spawns a task to run the ASGI
app, feeds it through a memory channel, and writes the status line and headers, the
body and the terminator with three ``send_all`` calls, each behind a lock. A request
to one of the app's fast routes (``/invoke/...``, ``/cluster/forward``: see
:class:`FastRoutes`) is instead answered in the connection's own task, straight from
the h11 events, and its whole response goes out in one ``send_all``. Everything else
(Quart's routes, websockets, HTTP/2) takes Hypercorn's ordinary path. Running the call
in the connection's task holds up nothing: HTTP/1.1 answers one request at a time.

**One round of the scheduler per request, not three.** The connection reads, and
the fast lane writes, through :mod:`towtruck.sockets`, which leaves out the yields
trio's streams make after each system call that succeeded at once.

**Lanes.** A peer's ``GET /cluster/lane`` with ``Upgrade: towtruck-lane`` is answered
``101`` and the connection is handed to the app's lane (:mod:`towtruck.lanes`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol
from wsgiref.handlers import format_date_time

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Body, EndBody, Event, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from . import codec, sockets
from .access import AccessLog
from .errors import BadRequest, HeadersTooLarge, PayloadTooLarge, TowtruckError
from .lanes import LANE_PATH, UPGRADE

__all__ = ["Connection", "FastRoutes", "reap_idle"]

logger = logging.getLogger("towtruck.http")

_STREAM_ID: Final = 1  # HTTP/1.1 has one stream; Hypercorn numbers it 1
# A request refused before its body was read (too large) is answered, then the
# connection reads and drops what the client still sends, up to these bounds, before
# closing: closing with unread data makes the kernel reset the connection, and the
# client may lose the answer it was sent (a "lingering close", as nginx does).
_LINGER_SECONDS: Final = 2.0
_LINGER_BYTES: Final = 4 * 1024 * 1024


class FastRoutes(Protocol):
    """The routes a connection answers without ASGI (:class:`towtruck.App`)."""

    max_body: int
    access_log: AccessLog | None

    async def serve_lane(
        self,
        stream: trio.SocketStream,
        initial: bytes,
        stopping: Callable[[], Awaitable[object]],
    ) -> None:
        """Answer calls on a connection upgraded to a lane (:mod:`towtruck.lanes`)
        until the peer closes it or ``stopping()`` returns."""
        ...

    def is_fast(self, verb: str, raw_path: bytes) -> bool:
        """Whether this request goes to a fast route."""
        ...

    def check_cluster_key(self, headers: Any) -> None:
        """Raise :class:`Unauthorized` or :class:`Forbidden` unless the request carries
        the cluster key (when one is set)."""
        ...

    async def respond(
        self,
        verb: str,
        raw_path: bytes,
        body: bytes,
        error: TowtruckError | None = None,
        *,
        headers: Any = (),
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers and body of the answer (``error``: answer that instead)."""
        ...


class Connection(TCPServer):
    """Hypercorn's connection handler with the keep-alive timer as a read deadline and
    a fast lane for ``fast`` routes. Plain TCP only (towtruck serves no TLS).

    Args:
        connections: The server's live connections, kept up to date, so a graceful
            shutdown can close the idle ones at once.
        fast: The app's fast routes, or None to send everything through ASGI.
        *args: Hypercorn's ``TCPServer`` arguments.
    """

    def __init__(self, connections: set[Connection], fast: FastRoutes | None, *args: Any) -> None:
        super().__init__(*args)
        self.idle_task = _IdleTimer(self)  # type: ignore[assignment]
        self._connections = connections
        self._fast = fast
        #: When the connection last became idle (between requests), or None if busy.
        self.idle_since: float | None = None
        #: When the request being received began to arrive, or None if none is.
        self.receiving_since: float | None = None
        #: Read and drop what the client still sends before closing (see _LINGER_*).
        self.linger = False

    def close_now(self) -> None:
        """Close the socket at once; the read loop ends. For idle connections only."""
        self.stream.socket.close()

    def close_if_quiet(self) -> None:
        """Close the socket at once (see :meth:`close_now`) unless bytes are waiting
        to be read: closing with a request unread would reset the connection, and its
        client could not tell that request from one that ran. Not a checkpoint."""
        if not sockets.readable_now(self.stream):  # type: ignore[arg-type]
            self.stream.socket.close()

    def excuse(self, stall: float) -> None:
        """Count ``stall`` seconds, when the process did not run, as neither idle nor
        receiving time (see :func:`reap_idle`)."""
        if self.idle_since is not None:
            self.idle_since += stall
        if self.receiving_since is not None:
            self.receiving_since += stall

    async def run(self) -> None:
        self._connections.add(self)
        try:
            socket = self.stream.socket
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                arguments = (
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                )
                self.protocol = ProtocolWrapper(*arguments)
                if self._fast is not None:
                    fast_protocol = (
                        _FastH11Protocol if self._fast.access_log is None else _LoggedH11Protocol
                    )
                    self.protocol.protocol = fast_protocol(self, self._fast, *arguments)
                await self.protocol.initiate()
                await self.idle_task.restart(task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        except Exception:  # a bug, but one connection must never take the server down
            logger.exception("closing a connection after an unexpected error")
        finally:
            await self._close()
            self._connections.discard(self)

    def _note_receiving(self) -> None:
        """Note whether a request's body is still arriving (see :func:`reap_idle`)."""
        h11_connection = getattr(self.protocol.protocol, "connection", None)
        if getattr(h11_connection, "their_state", None) is h11.SEND_BODY:
            if self.receiving_since is None:
                self.receiving_since = trio.current_time()
        else:
            self.receiving_since = None

    async def write(self, data: bytes) -> None:
        """Send bytes now: the fast lane's one write per response. Takes the send lock
        without a checkpoint when it is free (it always is, for HTTP/1.1); unlike
        Hypercorn's own sends it is not shielded, as only the connection's task writes
        here and it is cancelled only when the connection is torn down anyway."""
        lock = self.send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            sent = sockets.send_now(self.stream, data)  # type: ignore[arg-type]
            if sent < len(data):
                await self.stream.send_all(data[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
        finally:
            lock.release()

    async def _close(self) -> None:
        try:
            if self.linger:
                self.linger = False
                with trio.move_on_after(_LINGER_SECONDS):
                    await self.stream.send_eof()
                    left = _LINGER_BYTES
                    while left > 0 and (data := await self.stream.receive_some(MAX_RECV)):
                        left -= len(data)
            await super()._close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:  # cancelled (a node killed): close the socket anyway, not at GC
            self.stream.socket.close()

    async def _read_data(self) -> None:
        # A client waits for each answer before it sends its next request, so once a
        # read took all there was, the next one waits first.
        drained = True
        while True:
            try:
                data = await sockets.receive(self.stream, MAX_RECV, drained=drained)  # type: ignore[arg-type]
                drained = len(data) < MAX_RECV
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break  # closed by the reaper, or by the peer abruptly
            try:
                await self.protocol.handle(RawData(bytes(data)))
                self._note_receiving()
            except _UpgradedToLane as upgraded:
                assert self._fast is not None
                await self._fast.serve_lane(
                    self.stream,  # type: ignore[arg-type]
                    upgraded.initial,
                    self.context.terminated.wait,
                )
                break
            if data == b"":
                break
        await self.protocol.handle(Closed())


class _IdleTimer:
    """Stands in for Hypercorn's ``TrioSingleTask`` as a connection's keep-alive timer:
    it only notes when the connection became idle (see :func:`reap_idle`)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def restart(self, task_group: object, action: object) -> None:
        self._connection.idle_since = trio.current_time()

    async def stop(self) -> None:
        self._connection.idle_since = None


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


class _FastH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, answering fast routes in the connection's task."""

    def __init__(self, connection: Connection, fast: FastRoutes, *args: Any) -> None:
        super().__init__(*args)
        self.connection_handler = connection
        self._fast = fast

    async def _create_stream(self, request: h11.Request) -> None:
        verb = request.method.decode("ascii").upper()
        raw_path = request.target.partition(b"?")[0]
        # h11 bounds only a request head that arrives in pieces; one that arrives whole
        # is bounded here, for every route.
        size = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        too_long = size > self.config.h11_max_incomplete_size
        if not too_long:
            if raw_path == LANE_PATH and verb == "GET" and _upgrade_to(request) == UPGRADE:
                await self._accept_lane(request)  # returns only if it refused the lane
                return
            if verb == "HEAD" or not self._fast.is_fast(verb, raw_path):
                await super()._create_stream(request)
                return
        stream = _FastStream(self, verb, raw_path, request.headers)
        if too_long:
            stream.error = _headers_too_large()
        self.stream = stream  # type: ignore[assignment]
        self.keep_alive_requests += 1
        await self.context.mark_request()
        if stream.error is not None:  # refused on its headers: answer before its body
            await stream.answer()

    async def _accept_lane(self, request: h11.Request) -> None:
        refusal: TowtruckError | None = None
        try:
            self._fast.check_cluster_key(request.headers)
        except TowtruckError as exc:  # answered as an ordinary request, refused
            refusal = exc.with_traceback(None)  # the stream holds it: no cycle
        if refusal is not None:
            self.stream = stream = _FastStream(self, "GET", LANE_PATH, [])  # type: ignore[assignment]
            stream.error = refusal
            await stream.answer()
            return
        switch = h11.InformationalResponse(
            status_code=101, headers=[(b"connection", b"upgrade"), (b"upgrade", UPGRADE)]
        )
        await self.connection_handler.write(self.connection.send(switch))
        raise _UpgradedToLane(self.connection.trailing_data[0])

    async def _send_error_response(self, status_code: int) -> None:
        """Hypercorn answers a request h11 cannot parse with an empty body; this
        answers it as every other towtruck error, in JSON."""
        await self._refuse(_unreadable(status_code))

    async def _refuse(self, error: TowtruckError) -> int:
        """Answer ``error`` (the connection closes after it); the body's size."""
        body = codec.error_body(error)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"date", _date()),
        ]
        await self._send_h11_event(h11.Response(status_code=error.status, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())
        return len(body)

    async def send_answer(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """Send a whole response in one write, then end the request's cycle."""
        headers.append((b"date", _date()))
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))
        try:
            data = b"".join(
                (
                    self.connection.send(h11.Response(status_code=status, headers=headers)),
                    self.connection.send(h11.Data(data=body)),
                    self.connection.send(h11.EndOfMessage()),
                )
            )
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
        else:
            await self.connection_handler.write(data)
        await self.stream_send(StreamClosed(stream_id=_STREAM_ID))


class _LoggedH11Protocol(_FastH11Protocol):
    """:class:`_FastH11Protocol` writing the access log's line (:mod:`towtruck.access`)
    for each request it answers itself: fast routes, lanes, and requests the parser
    refuses. Requests it hands to ASGI are logged there. A protocol of its own, so
    that without the access log the fast lane does not even check for it."""

    def __init__(self, connection: Connection, fast: FastRoutes, *args: Any) -> None:
        super().__init__(connection, fast, *args)
        assert fast.access_log is not None
        self._log = fast.access_log.log
        client = self.client
        self._client = f"{client[0]}:{client[1]}" if client else "-"
        self._request: tuple[str, str, float] = ("-", "-", trio.current_time())

    async def _create_stream(self, request: h11.Request) -> None:
        method = request.method.decode("ascii")
        self._request = (method, request.target.decode("latin-1"), trio.current_time())
        await super()._create_stream(request)

    async def send_answer(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        await super().send_answer(status, headers, body)
        self._log(self._client, *self._request[:2], status, len(body), self._request[2])

    async def _accept_lane(self, request: h11.Request) -> None:
        try:
            await super()._accept_lane(request)
        except _UpgradedToLane:
            self._log(self._client, *self._request[:2], 101, 0, self._request[2])
            raise

    async def _send_error_response(self, status_code: int) -> None:
        if isinstance(self.stream, _FastStream):  # the request it began is refused
            method, target, started = self._request
        elif self.stream is None:  # not a request yet: nothing to name it by
            method, target, started = "-", "-", trio.current_time()
        else:  # a request handed to ASGI, which logs it
            await super()._send_error_response(status_code)
            return
        error = _unreadable(status_code)
        size = await self._refuse(error)
        self._log(self._client, method, target, error.status, size, started)


class _FastStream:
    """One request to a fast route: its body gathered from h11's events, its answer
    computed by the app and sent by the protocol in one write."""

    def __init__(
        self, protocol: _FastH11Protocol, verb: str, raw_path: bytes, headers: Any
    ) -> None:
        self._protocol = protocol
        self._verb = verb
        self._raw_path = raw_path
        self._headers = headers
        self._chunks: list[bytes] = []
        self._size = 0
        self._max_body = protocol._fast.max_body
        self.closed = False
        self.error: TowtruckError | None = None
        for name, value in headers:
            if name == b"content-length" and int(value) > self._max_body:
                self.error = _too_large(self._max_body)

    @property
    def idle(self) -> bool:
        return False

    async def handle(self, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, Body):
            self._size += len(event.data)
            if self._size > self._max_body:
                self.error = _too_large(self._max_body)
                await self.answer()
            else:
                self._chunks.append(bytes(event.data))
        elif isinstance(event, EndBody):
            await self.answer()
        elif isinstance(event, StreamClosed):
            self.closed = True

    async def answer(self) -> None:
        """Compute the answer and send it (once)."""
        self.closed = True
        if self.error is not None:  # refused before the body was all read
            self._protocol.connection_handler.linger = True
        body = b"".join(self._chunks)
        status, headers, answer = await self._protocol._fast.respond(
            self._verb, self._raw_path, body, self.error, headers=self._headers
        )
        await self._protocol.send_answer(status, headers, answer)


class _UpgradedToLane(Exception):
    """Raised out of the protocol to hand the connection over to a lane (a signal,
    not an error)."""

    def __init__(self, initial: bytes) -> None:
        super().__init__()
        self.initial = initial


def _upgrade_to(request: h11.Request) -> bytes:
    for name, value in request.headers:
        if name == b"upgrade":
            return bytes(value).strip().lower()
    return b""


# Errors are built afresh for each request, never kept in a module-level instance:
# every raise of a shared instance would lengthen its one traceback, which holds the
# frames, and so the headers, of every request it was raised for.


def _not_http() -> BadRequest:
    return BadRequest("the request is not valid HTTP/1.1")


def _headers_too_large() -> HeadersTooLarge:
    return HeadersTooLarge("the request line and headers are over 16 KiB")


def _unreadable(status_code: int) -> BadRequest:
    """The error for a request h11 could not parse, by the status h11 hints at."""
    # h11 hints at other statuses too (501 for a transfer-encoding it does not know,
    # say): they are all a request towtruck cannot read, a 400.
    return _headers_too_large() if status_code == 431 else _not_http()


def _too_large(max_body: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is over max_body ({max_body} bytes)", max_body=max_body)


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    """The ``Date`` header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_date_time(now).encode("ascii"))
    return _date_cache[1]
