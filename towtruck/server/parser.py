"""Reading HTTP/1.1 requests off a connection: with httptools, or h11 where it does not
install.

httptools binds llhttp, the parser of Node.js (and of uvicorn): it parses a request in
about a microsecond, where h11, a state machine in Python, took a third of a request's
whole cost even compiled. h11 stays as the fallback, for platforms without httptools
wheels (the ``http_parser`` setting picks one: the suite runs on both).

Both backends hand the connection the same thing: whole :class:`Request` objects, in
the order they came (a client may pipeline several in one write), and raise
:class:`Unreadable` for what is not HTTP/1.1 or breaks a limit. Bodies are gathered
whole: every route takes a small JSON body. Limits, checked as the bytes come:

- the request line and headers: :data:`MAX_HEAD` (llhttp has no limit of its own, so
  the bytes of a head still arriving are counted, and a complete head is measured);
- the body: ``max_body`` bytes, by its ``content-length`` as soon as the head is in
  (the answer need not wait for a body it refuses) or as a chunked one arrives.

A request whose head is complete and whose body is still to come is
:attr:`Parser.waiting`: the connection answers ``100 Continue`` to it if asked, and
the reaper times its body (``request_timeout``).
"""

from __future__ import annotations

from collections import deque
from typing import Final, Protocol

from ..errors import BadRequest, HeadersTooLarge, TowtruckError
from .limits import body_too_large

__all__ = ["MAX_HEAD", "Parser", "Request", "Unreadable", "open_parser"]

#: Most bytes in a request's line and headers; past it, 431.
MAX_HEAD: Final = 16 * 1024


class Request:
    """One request, head and body.

    Attributes:
        method: The verb, upper case (``b"GET"``).
        target: The request target as sent (path and query, still percent-encoded).
        headers: ``(name, value)`` pairs, names lower case.
        body: The whole body.
        keep_alive: The client keeps the connection open after the answer.
        expects_continue: The client waits for ``100 Continue`` before its body.
        upgrade: The ``Upgrade`` header's value, lower case (``b""`` if none), when
            the client asked to switch protocols (``Connection: upgrade``).
        http10: An HTTP/1.0 request (which cannot read a chunked answer).
    """

    __slots__ = (
        "body",
        "expects_continue",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "target",
        "upgrade",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.expects_continue = False
        self.upgrade = b""
        self.http10 = False

    @property
    def path(self) -> bytes:
        """The target without its query string."""
        return self.target.partition(b"?")[0]

    @property
    def query(self) -> bytes:
        """The target's query string, without the ``?``."""
        return self.target.partition(b"?")[2]


class Unreadable(Exception):
    """The bytes are not an HTTP/1.1 request, or break a limit: answer ``error`` and
    close the connection (nothing past this point can be read as a request).

    Attributes:
        error: What to answer: 400, 413 or 431.
        request: The request it happened in, if its head was read (a body over
            ``max_body``): its answer may say which route refused it.
    """

    def __init__(self, error: TowtruckError, request: Request | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request = request


class Upgraded(Exception):
    """A request asked to switch protocols (``Upgrade``), and the parser has stopped:
    what follows its head on the connection is ``rest``, in the new protocol."""

    def __init__(self, request: Request, rest: bytes) -> None:
        super().__init__()
        self.request = request
        self.rest = rest


class Parser(Protocol):
    """Turns the bytes a connection reads into :class:`Request` objects."""

    #: Complete requests, oldest first; the connection takes them off the front.
    requests: deque[Request]

    @property
    def waiting(self) -> Request | None:
        """The request whose head is in and whose body is still to come, if any."""
        ...

    @property
    def receiving(self) -> bool:
        """Some of a request has arrived, and not all of it (a head or a body)."""
        ...

    def feed(self, data: bytes) -> None:
        """Parse ``data``, the next bytes of the connection (``b""``: the client closed
        its end); append the requests it completes to :attr:`requests`.

        Raises:
            Unreadable: not HTTP/1.1, or over a limit; parse nothing more.
            Upgraded: a request asked to switch protocols; parse nothing more.
        """
        ...

    def answered(self) -> None:
        """The oldest request has been answered. (h11 reads one request at a time: it
        reads a pipelined one now, if one waits.)

        Raises:
            Unreadable, Upgraded: as :meth:`feed`.
        """
        ...


def open_parser(max_body: int, backend: str = "auto") -> Parser:
    """A parser for one connection: with ``backend``, ``"httptools"`` or ``"h11"``
    (``"auto"``: :data:`BACKEND`, httptools where it is installed)."""
    if backend == "auto":
        backend = BACKEND
    if backend == "h11":
        return _H11Parser(max_body)
    if httptools is None:
        raise RuntimeError("http_parser is httptools, and httptools is not installed")
    return _HttptoolsParser(max_body)


def _bad(message: str = "the request is not valid HTTP/1.1") -> Unreadable:
    return Unreadable(BadRequest(message))


def _too_long(request: Request | None = None) -> Unreadable:
    message = f"the request line and headers are over {MAX_HEAD // 1024} KiB"
    return Unreadable(HeadersTooLarge(message), request)


def _too_large(size: int, max_body: int, request: Request, *, declared: bool) -> Unreadable:
    error = body_too_large(size, max_body, declared=declared)
    assert error is not None  # the caller compared first
    return Unreadable(error, request)


try:
    import httptools
except ImportError:  # pragma: no cover (where it has no wheels)
    httptools = None  # type: ignore[assignment]

#: The backend :func:`open_parser` uses for ``"auto"``.
BACKEND = "httptools" if httptools is not None else "h11"


class _HttptoolsParser:
    """llhttp through httptools: it calls back as it parses (see :class:`Parser`)."""

    def __init__(self, max_body: int) -> None:
        self.requests: deque[Request] = deque()
        self._max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._request: Request | None = None  # being read
        self._head = 0  # bytes of its head counted so far
        self._body: list[bytes] = []
        self._size = 0
        self._in_body = False
        self._refusal: Unreadable | None = None

    @property
    def waiting(self) -> Request | None:
        return self._request if self._in_body else None

    @property
    def receiving(self) -> bool:
        return self._request is not None

    def feed(self, data: bytes) -> None:
        in_head = self._request is not None and not self._in_body
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            raise Upgraded(self.requests.pop(), data[upgrade.args[0] :]) from None
        except httptools.HttpParserCallbackError:
            refusal, self._refusal = self._refusal, None
            assert refusal is not None
            raise refusal from None
        except httptools.HttpParserError as exc:
            raise _bad(f"the request is not valid HTTP/1.1: {exc}") from None
        if not data and self._request is not None:
            raise _bad("the connection closed in the middle of a request")
        if in_head and self._request is not None and not self._in_body:
            # A head that began before this read and is still not complete: all of
            # this is head. (One that begins within a read is measured when complete.)
            self._head += len(data)
            if self._head > MAX_HEAD:
                raise _too_long()

    def answered(self) -> None:
        pass  # llhttp reads on by itself: pipelined requests are all in ``requests``

    # httptools' callbacks.

    def on_message_begin(self) -> None:
        self._request = Request()
        self._head = 0
        self._in_body = False

    def on_url(self, url: bytes) -> None:
        request = self._request
        assert request is not None
        request.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        assert request is not None
        request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        parser = self._parser
        request.method = parser.get_method()
        request.keep_alive = parser.should_keep_alive()
        head = len(request.target) + 16
        length = 0
        for name, value in request.headers:
            head += len(name) + len(value) + 4
            if name == b"expect":
                request.expects_continue = value.lower() == b"100-continue"
            elif name == b"upgrade" and parser.should_upgrade():
                request.upgrade = value.strip().lower()
            elif name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"connection":  # (HTTP/1.0 keeps a connection only if told to)
                request.http10 = parser.get_http_version() == "1.0"
        if head > MAX_HEAD:
            self._refusal = _too_long(request)
            raise self._refusal
        if length > self._max_body:  # compared here first: this runs for every request
            self._refusal = _too_large(length, self._max_body, request, declared=True)
            raise self._refusal
        self._in_body = True
        self._body = []
        self._size = 0

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            assert self._request is not None
            self._refusal = _too_large(self._size, self._max_body, self._request, declared=False)
            raise self._refusal
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        request.body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = []
        self._request = None
        self._in_body = False
        self.requests.append(request)


class _H11Parser:
    """h11, where httptools does not install (see :class:`Parser`)."""

    def __init__(self, max_body: int) -> None:
        import h11

        self._h11 = h11
        self.requests: deque[Request] = deque()
        self._max_body = max_body
        self._connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._request: Request | None = None
        self._body: list[bytes] = []
        self._size = 0

    @property
    def waiting(self) -> Request | None:
        return self._request

    @property
    def receiving(self) -> bool:
        return self._request is not None or bool(self._connection.trailing_data[0])

    def feed(self, data: bytes) -> None:
        self._connection.receive_data(data)
        self._read(closed=not data)

    def answered(self) -> None:
        h11 = self._h11
        connection = self._connection
        if connection.their_state is h11.DONE and connection.our_state is h11.SEND_RESPONSE:
            # h11 checks what a server sends; towtruck writes its answers itself, so
            # tell h11 the cycle is over with an answer it need not check.
            connection.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            connection.send(h11.EndOfMessage())
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
            self._read(closed=False)  # a request pipelined behind it, if one waits

    def _read(self, *, closed: bool) -> None:
        h11 = self._h11
        connection = self._connection
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:
                    raise _too_long() from None
                raise _bad(f"the request is not valid HTTP/1.1: {exc}") from None
            if event is h11.NEED_DATA:
                if closed and self._request is not None:
                    raise _bad("the connection closed in the middle of a request")
                return
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                # One request at a time: h11 reads the next once this one is answered,
                # so pipelined requests wait in its buffer, as they do in the socket's.
                return
            if isinstance(event, h11.Request):
                self._begin(event)
            elif isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > self._max_body:
                    assert self._request is not None
                    raise _too_large(self._size, self._max_body, self._request, declared=False)
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                request, self._request = self._request, None
                assert request is not None
                request.body = b"".join(self._body)
                if request.upgrade:
                    raise Upgraded(request, connection.trailing_data[0])
                self.requests.append(request)

    def _begin(self, event: object) -> None:
        h11 = self._h11
        assert isinstance(event, h11.Request)
        request = self._request = Request()
        request.method = bytes(event.method)
        request.target = bytes(event.target)
        request.headers = [(bytes(n), bytes(v)) for n, v in event.headers]
        request.keep_alive = event.http_version == b"1.1"
        request.http10 = event.http_version == b"1.0"
        self._body = []
        self._size = 0
        head = len(request.target) + 16 + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if head > MAX_HEAD:  # h11 bounds only a head that arrives in pieces
            raise _too_long(request)
        upgrade = b""
        for name, value in request.headers:
            if name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    request.keep_alive = False
                elif b"keep-alive" in tokens:
                    request.keep_alive = True
                if b"upgrade" in tokens:
                    upgrade = b"?"
            elif name == b"expect":
                request.expects_continue = value.lower() == b"100-continue"
            elif name == b"content-length" and int(value) > self._max_body:
                raise _too_large(int(value), self._max_body, request, declared=True)
        if upgrade:
            for name, value in request.headers:
                if name == b"upgrade":
                    request.upgrade = value.strip().lower()
