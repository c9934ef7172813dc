"""Serving an ASGI app on Hypercorn's trio worker, with towtruck's connection handler.

:func:`serve` is Hypercorn's ``hypercorn.trio.serve`` with the connection handler of
:mod:`towtruck.connection` (which fixes Hypercorn 0.18's keep-alive timer under
Quart-Trio and answers the app's fast routes without ASGI), on sockets bound
beforehand if the caller likes (:func:`bind`), and with a graceful shutdown that closes
idle connections at once instead of waiting them out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework
from hypercorn.utils import repr_socket_addr, wrap_app

from .connection import Connection, FastRoutes, reap_idle
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
    config.accesslog = None  # the app and the connections write it (towtruck.access)
    config.errorlog = logger
    config.include_server_header = False
    return config


def bind(config: Config, fds: Sequence[int] = ()) -> tuple[Sockets, list[str]]:
    """Bind and listen on ``config.bind`` now, or take over the listening sockets
    ``fds`` (a process manager's: see :mod:`towtruck.workers`); returns the sockets
    (for :func:`serve`) and their URLs, so a node knows its port before it serves."""
    if fds:
        config.bind = [f"fd://{fd}" for fd in fds]
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
    fast: FastRoutes | None = None,
    request_timeout: float = 30.0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger()`` returns, then shut down gracefully.

    Serves on ``sockets`` from :func:`bind`, or binds ``config.bind`` itself. Requests
    to ``fast`` routes are answered without ASGI (see :mod:`towtruck.connection`). Reports
    the URLs (``["http://127.0.0.1:8080"]``) through ``task_status``. Runs the app's
    ASGI lifespan around serving. On shutdown it stops accepting, closes idle
    connections at once (but answers a request already sent on one, then closes),
    and gives requests in flight ``config.graceful_timeout`` before cancelling them;
    if cancelled instead, it closes every socket at once.
    Installs no signal handlers; the caller decides what ends serving.
    """
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    connections: set[Connection] = set()
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
        handler = partial(Connection, connections, fast, wrapped, config, context, lifespan_state)
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
                    accept_nursery.start_soon(
                        reap_idle, connections, config.keep_alive_timeout, request_timeout
                    )
                    task_status.started(urls)
                    await shutdown_trigger()
                    accept_nursery.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    listener.socket.close()  # refuse new connections, even when cancelled
            await context.terminated.set()
            for connection in list(connections):
                if connection.idle_since is not None:
                    connection.close_if_quiet()
            connection_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
