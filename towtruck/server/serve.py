"""A node's HTTP server: its listening sockets, a task per connection
(:mod:`towtruck.server.connection`), the reaper of idle connections, the app's lifespan, and
a graceful stop.

``App`` under another ASGI server (``hypercorn --worker-class trio module:app``) does
not come here: that server reads its connections. Here towtruck reads them itself, for
speed (see :mod:`towtruck.server.connection`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from ..settings import Settings
from .bridge import Bridge, open_lifespan
from .connection import Connection, Server, reap_idle

if TYPE_CHECKING:
    from .app import App

__all__ = ["listen", "serve"]

logger = logging.getLogger("towtruck.http")

#: Connections the kernel queues for a listening socket before the server takes them.
BACKLOG: Final = 1024


def listen(settings: Settings, fds: Sequence[int] = ()) -> tuple[list[socket.socket], list[str]]:
    """Listen on ``settings.host`` and ``port`` now, or take over the listening sockets
    ``fds`` (a process manager's: see :mod:`towtruck.workers`); returns the sockets
    (for :func:`serve`) and the URLs of those on TCP, so a node knows its port before
    it serves.

    Raises:
        OSError: the address cannot be listened on (``socket.gaierror`` if the host
            does not resolve).
    """
    if fds:
        sockets = [socket.socket(fileno=fd) for fd in fds]
    else:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        sockets = [sock]
    return sockets, [_url(sock) for sock in sockets if sock.family != socket.AF_UNIX]


def _url(sock: socket.socket) -> str:
    host, port, *_ = sock.getsockname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    app: App,
    settings: Settings,
    *,
    sockets: list[socket.socket],
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``sockets`` (from :func:`listen`) until ``shutdown_trigger()``
    returns, then stop gracefully. Reports the URLs through ``task_status``.

    Runs the app's ASGI lifespan around serving. On a graceful stop it stops accepting,
    closes idle connections at once (those with a request waiting are answered, with
    ``connection: close``), lets the requests under way finish within
    ``shutdown_timeout``, then cancels what is left. Cancelled instead, it closes every
    socket at once. Installs no signal handlers: the caller decides what ends serving.
    An error escaping a connection's task is a bug: it is logged, and that connection
    closed; the server serves on.
    """
    bridge = Bridge(app.routes)
    server = Server(
        app, bridge, request_timeout=settings.request_timeout, parser=settings.http_parser
    )
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
    urls = [_url(s) for s in sockets if s.family != socket.AF_UNIX]

    async def connect(stream: trio.SocketStream) -> None:
        await Connection(stream, server).run()

    try:
        async with open_lifespan(app.routes, shutdown_timeout=settings.shutdown_timeout) as state:
            bridge.state = state
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners, connect, listeners, handler_nursery=connections
                        )
                    )
                    accepting.start_soon(
                        reap_idle,
                        server.connections,
                        settings.keep_alive_timeout,
                        settings.request_timeout,
                    )
                    task_status.started(urls)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
                for listener in listeners:
                    listener.socket.close()  # refuse new connections
                server.stopping.set()
                for connection in list(server.connections):
                    if connection.idle_since is not None:
                        connection.close_if_quiet()
                connections.cancel_scope.deadline = trio.current_time() + settings.shutdown_timeout
    finally:
        for listener in listeners:
            listener.socket.close()
