"""towtruck's ASGI application: ``/invoke`` on a fast path, every other route on Quart.

``/invoke/{id}/{method}[/{arg}...]`` is the product's hot path, so it is answered here,
in plain ASGI, without Quart's routing, request and response objects (a quarter of a
request's cost in Quart-Trio, measured), and so is ``POST /cluster/forward``, the calls
other nodes send on. Every other route is an ordinary Quart-Trio route
(:mod:`towtruck.server.routes`). Both answer errors the same way: JSON
``{"error": {...}}`` with the status of :data:`towtruck.errors.STATUS`.

Paths are split on the raw (still percent-encoded) path, so an id may hold ``/`` as
``%2F``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final
from urllib.parse import unquote_to_bytes

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from .. import codec, tracing
from ..calls import CallContext
from ..catalog import Factory
from ..cluster import wire
from ..cluster.credentials import check_cluster_key
from ..errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    TowtruckError,
)
from ..ids import check_actor_id
from ..runtime import Runtime
from ..settings import Settings
from ..transport.lane_server import serve_lane
from .access import AccessLog, LoggedSend
from .forwarded import ForwardedCalls
from .limits import body_too_large
from .routes import build_routes

__all__ = ["App"]

logger = logging.getLogger("towtruck.http")

#: Verbs whose JSON body is the call's data; the others pass their extra path segments.
BODY_VERBS: Final = frozenset({"POST", "PUT", "PATCH"})
#: Verbs that call an actor's method. ``HEAD`` and ``OPTIONS`` do not: a link checker
#: or a browser's CORS preflight must not run ``transfer``.
CALL_VERBS: Final = frozenset({"GET", "DELETE", *BODY_VERBS})
#: A request header giving the seconds the client waits for the answer: the call's
#: deadline is that or ``call_timeout``, whichever is sooner.
TIMEOUT_HEADER: Final = b"towtruck-timeout"
#: Most path segments after the method (GET data); most characters in a method name.
MAX_SEGMENTS: Final = 64
MAX_METHOD_LENGTH: Final = 128
_JSON: Final = (b"content-type", b"application/json")
_ALLOW: Final = (b"allow", b"GET, POST, PUT, PATCH, DELETE, OPTIONS")


class App:
    """The ASGI app of a towtruck node.

    Serve it with ``hypercorn --worker-class trio module:app``: the node's actors then
    start with the app's ASGI lifespan and stop gracefully with it. ``open_node`` and
    ``towtruck serve`` use it too, with the runtime started beside the server instead.

    Args:
        create_actor: ``create_actor(id, client)``.
        runtime: An existing runtime to serve instead (then give no settings).
        **settings: Any :class:`~towtruck.Settings` name; the rest come from
            ``TOWTRUCK_*`` environment variables and the defaults.
    """

    def __init__(
        self,
        create_actor: Factory | None = None,
        *,
        runtime: Runtime | None = None,
        **settings: Any,
    ) -> None:
        if runtime is None:
            if create_actor is None:
                raise TypeError("App needs create_actor (or a runtime)")
            runtime = Runtime(create_actor, Settings.load(**settings))
        elif create_actor is not None or settings:
            raise TypeError("give App either a runtime or create_actor and settings")
        self.runtime = runtime
        self.routes = build_routes(runtime)
        self._debug = runtime.settings.debug
        self._cluster_key = runtime.settings.cluster_key
        self._forwarded = ForwardedCalls(runtime, debug=self._debug)
        #: Largest request body accepted, in bytes.
        self.max_body = runtime.settings.max_body
        #: Writes a line per request (``access_log``), or None.
        self.access_log = AccessLog() if runtime.settings.access_log else None
        self._call_timeout = runtime.settings.call_timeout

    def is_fast(self, verb: str, raw_path: bytes) -> bool:
        """Whether a request goes to a fast route (``/invoke``, ``/cluster/forward``)."""
        return raw_path.startswith(b"/invoke/") or (
            raw_path == wire.FORWARD_PATH and verb == "POST"
        )

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        # With the access log on, the request comes back here through it, its send
        # wrapped: off, this costs one attribute check (``and`` stops there).
        if self.access_log is not None and not isinstance(send, LoggedSend):
            await self.access_log.serve(self, scope, receive, send)
            return
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            if self.is_fast(scope["method"], raw_path):
                try:
                    body = await self._read_body(scope, receive)
                except _ClientGone:
                    return
                except PayloadTooLarge as exc:
                    status, headers, answer = self._refusal(exc)
                else:
                    status, headers, answer = await self.respond(
                        scope["method"], raw_path, body, headers=scope["headers"]
                    )
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": headers,
                        "trailers": False,
                    }
                )
                await send({"type": "http.response.body", "body": answer, "more_body": False})
                return
        await self.routes(scope, receive, send)

    def check_cluster_key(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Refuse a request to a cluster route without the cluster key (see
        :mod:`towtruck.cluster.credentials`)."""
        check_cluster_key(self._cluster_key, headers)

    async def respond(
        self,
        verb: str,
        raw_path: bytes,
        body: bytes,
        error: TowtruckError | None = None,
        *,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Answer a request to a fast route: status, headers and body, errors as JSON.

        Shared by the ASGI entry point and by the server's own fast lane
        (:mod:`towtruck.server.connection`), which hands over the request without ASGI.

        Args:
            error: A problem found while reading the request (a body over
                ``max_body``), to answer instead.
            headers: The request's headers (the cluster key is looked for there).
        """
        if error is not None:  # rendered, not raised: it may be raised elsewhere too
            return self._refusal(error)
        try:
            if raw_path.startswith(b"/invoke/"):
                if verb not in CALL_VERBS:
                    return self._not_a_call(verb)
                status, answer = 200, await self._invoke(verb, raw_path, body, headers)
            else:
                self.check_cluster_key(headers)
                status, answer = 200, await self._forwarded.run(wire.decode_call(body))
        except TowtruckError as exc:
            return self._refusal(exc)
        except Exception as exc:
            logger.exception("error answering %s %r", verb, raw_path)
            return self._failure(exc)
        return status, [_JSON, (b"content-length", str(len(answer)).encode())], answer

    def _refusal(self, error: TowtruckError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return codec.error_answer(error, debug=self._debug)

    def _failure(self, exc: Exception) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        # Built here, not in respond(), so that respond's frame (which exc's traceback
        # holds) holds no reference back to exc.
        failure = InternalError(f"towtruck failed answering this call: {type(exc).__name__}")
        failure.__cause__ = exc
        return self._refusal(failure)

    def _not_a_call(self, verb: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``OPTIONS``: 200, the verbs a call takes in ``Allow`` (as Quart answers it
        on the other routes). Any other verb but those (``HEAD`` too, which a link
        checker sends): 405. Neither runs anything."""
        if verb == "OPTIONS":
            return 200, [_ALLOW, (b"content-length", b"0")], b""
        status, headers, answer = self._refusal(
            MethodNotAllowed(f"/invoke does not take {verb}; it takes {_ALLOW[1].decode()}")
        )
        headers.append(_ALLOW)
        return status, headers, answer

    async def serve_lane(
        self,
        stream: trio.SocketStream,
        initial: bytes,
        stopping: Callable[[], Awaitable[object]],
    ) -> None:
        """Answer the calls a peer sends on a lane (see :mod:`towtruck.transport.lanes`)."""
        await serve_lane(stream, initial, self._forwarded, stopping)

    async def _invoke(
        self, verb: str, raw_path: bytes, body: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> bytes:
        """``/invoke/{id}/{method}[/{arg}...]``, from a client outside the cluster (a
        ``traceparent`` header continues its trace, when tracing is on)."""
        actor_id, method, args = parse_invoke_path(raw_path)
        if verb in BODY_VERBS:
            if args:
                raise BadRequest(
                    f"{verb} takes its data as a JSON body; extra path segments are the"
                    " data of GET and DELETE only",
                    actor=actor_id,
                    method=method,
                )
            data = codec.loads(body) if body.strip() else None
        else:
            data = args
        # The connection that asked waits for its client's next request as soon as it
        # has written this answer (a server under ASGI does the same): that yields.
        timeout = self._call_timeout
        trace = None
        traced = self.runtime.tracer is not None
        for name, value in headers:
            if name == TIMEOUT_HEADER:
                timeout = min(timeout, _seconds(value))
            elif traced and name == b"traceparent":
                trace = tracing.from_traceparent(value.decode("latin-1"))
        context = CallContext((), trio.current_time() + timeout, caller_yields=True, trace=trace)
        return await self.runtime.invoke(actor_id, method, data, context)

    async def _read_body(self, scope: HTTPScope, receive: ASGIReceiveCallable) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and (
                error := body_too_large(int(value), self.max_body, declared=True)
            ):
                raise error
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if error := body_too_large(size, self.max_body, declared=False):
                raise error
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _seconds(value: bytes) -> float:
    """A ``towtruck-timeout`` header's seconds.

    Raises:
        BadRequest: it is not a positive number.
    """
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise BadRequest(
            f"{TIMEOUT_HEADER.decode()} must be a positive number of seconds, not"
            f" {value[:50].decode('latin-1')!r}"
        )
    return seconds


class _ClientGone(Exception):
    """The client disconnected before sending its whole request: nobody to answer."""


def parse_invoke_path(raw_path: bytes) -> tuple[str, str, list[str]]:
    """Split ``/invoke/{id}/{method}[/{arg}...]`` into id, method and arguments.

    A trailing slash adds no empty argument. Segments are percent-decoded one by one.

    Raises:
        RouteNotFound: no method segment.
        InvalidActorId: the id is empty or otherwise bad.
        BadRequest: a segment is not UTF-8 once decoded.
    """
    parts = raw_path.split(b"/")[2:]
    if len(parts) > 2 and not parts[-1]:
        parts.pop()
    if len(parts) < 2 or not parts[1]:
        raise RouteNotFound(
            "expected /invoke/{id}/{method}[/{arg}...]", path=raw_path[:200].decode("latin-1")
        )
    if len(parts) > MAX_SEGMENTS + 2:
        raise BadRequest(f"too many path segments: at most {MAX_SEGMENTS} after the method")
    segments = [_decode_segment(part) for part in parts]
    if len(segments[1]) > MAX_METHOD_LENGTH:
        raise BadRequest(f"method names are at most {MAX_METHOD_LENGTH} characters")
    return check_actor_id(segments[0]), segments[1], segments[2:]


def _decode_segment(segment: bytes) -> str:
    try:
        if b"%" in segment:
            return unquote_to_bytes(segment).decode("utf-8")
        return segment.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("a path segment is not UTF-8 once percent-decoded") from None
