"""Serving an ASGI app on Hypercorn's trio worker, with its keep-alive timer fixed.

Written against Hypercorn 0.18 (``pyproject.toml`` pins ``hypercorn>=0.18,<0.19`` and a
test checks the pin), whose trio worker has a bug this module works around:

After each response Hypercorn restarts a connection's keep-alive timer by spawning a
task with ``nursery.start`` from inside the app's ``send``. Quart-Trio calls ``send``
from its per-request nursery and cancels that nursery as soon as the response is out,
which cancels the timer task before it has started; an idle keep-alive connection
then stays open forever. Here the timer is instead a deadline on the connection's
read: idle, the read gives up ``keep_alive_timeout`` after the last response; busy,
it waits as long as the request takes. That needs no task, no lock and no checkpoint
per request, so it is also cheaper. The fix is small enough to send upstream: it
replaces ``TrioSingleTask`` in ``TCPServer`` and the read loop that uses it.

:func:`serve` is Hypercorn's ``hypercorn.trio.serve`` with that connection class, plus a
graceful shutdown that closes idle connections at once instead of waiting them out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework
from hypercorn.utils import repr_socket_addr, wrap_app

from .settings import Settings

__all__ = ["bind", "hypercorn_config", "serve"]

logger = logging.getLogger("towtruck.http")


def hypercorn_config(settings: Settings) -> Config:
    """The Hypercorn configuration for a node with these settings."""
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.graceful_timeout = settings.shutdown_timeout
    config.accesslog = logging.getLogger("towtruck.access") if settings.access_log else None
    config.errorlog = logger
    config.include_server_header = False
    return config


class _IdleTimer:
    """Stands in for Hypercorn's ``TrioSingleTask`` as a connection's keep-alive
    timer: restarting or stopping it moves the deadline of the connection's read."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def restart(self, task_group: object, action: object) -> None:
        self._connection.set_idle_deadline(
            trio.current_time() + self._connection.config.keep_alive_timeout
        )

    async def stop(self) -> None:
        self._connection.set_idle_deadline(math.inf)


class _Connection(TCPServer):
    """Hypercorn's connection handler with the keep-alive timer as a read deadline."""

    def __init__(self, connections: set[_Connection], *args: Any) -> None:
        super().__init__(*args)
        self.idle_task = _IdleTimer(self)  # type: ignore[assignment]
        self._connections = connections
        self._idle_deadline = math.inf
        self._read_scope: trio.CancelScope | None = None

    @property
    def idle(self) -> bool:
        """Between requests: waiting for the next one, or for the keep-alive deadline."""
        return self._idle_deadline != math.inf

    def set_idle_deadline(self, deadline: float) -> None:
        """Close the connection at ``deadline`` unless a request starts before then."""
        self._idle_deadline = deadline
        if self._read_scope is not None:
            self._read_scope.deadline = deadline

    async def run(self) -> None:
        self._connections.add(self)
        try:
            await super().run()
        finally:
            self._connections.discard(self)

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:  # cancelled (a node killed): close the socket anyway, not at GC
            self.stream.socket.close()

    async def _read_data(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._idle_deadline) as scope:
                self._read_scope = scope
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                finally:
                    self._read_scope = None
            if scope.cancelled_caught:  # idle past the keep-alive deadline, or shutdown
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())


def bind(config: Config) -> tuple[Sockets, list[str]]:
    """Bind and listen on ``config.bind`` now; returns the sockets (for :func:`serve`)
    and their URLs, so a node knows its port before it serves."""
    sockets = config.create_sockets()
    urls = []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        urls.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return sockets, urls


async def serve(
    app: ASGIFramework,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    sockets: Sockets | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger()`` returns, then shut down gracefully.

    Serves on ``sockets`` from :func:`bind`, or binds ``config.bind`` itself. Reports
    the URLs (``["http://127.0.0.1:8080"]``) through ``task_status``. Runs the app's
    ASGI lifespan around serving. On shutdown it stops accepting, closes idle
    connections at once, and gives requests in flight ``config.graceful_timeout``
    before cancelling them; if cancelled instead, it closes every socket at once.
    Installs no signal handlers; the caller decides what ends serving.
    """
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    connections: set[_Connection] = set()
    # Errors from the app's lifespan or from a connection handler propagate out of
    # these nurseries; an error in the app's handling of one request does not (Hypercorn
    # answers 500 and logs it).
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        if sockets is None:
            sockets, urls = bind(config)
        else:
            urls = [
                f"http://{repr_socket_addr(sock.family, sock.getsockname())}"
                for sock in sockets.insecure_sockets
            ]
        listeners = [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            for sock in sockets.insecure_sockets
        ]
        handler = partial(_Connection, connections, wrapped, config, context, lifespan_state)
        async with trio.open_nursery() as connection_nursery:
            try:
                async with trio.open_nursery() as accept_nursery:
                    accept_nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            handler,
                            listeners,
                            handler_nursery=connection_nursery,
                        )
                    )
                    task_status.started(urls)
                    await shutdown_trigger()
                    accept_nursery.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    listener.socket.close()  # refuse new connections, even when cancelled
            await context.terminated.set()
            for connection in list(connections):
                if connection.idle:
                    connection.set_idle_deadline(-math.inf)
            connection_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
