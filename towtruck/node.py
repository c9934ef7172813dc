"""A node: the runtime and its HTTP server, started together in one nursery.

:func:`open_node` is the embedded way to run one; :func:`serve_node` adds signal
handling for processes (``towtruck serve``), and :func:`run` is its blocking one-liner.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from .address import Address
from .app import App
from .catalog import Factory
from .client import Client
from .runtime import Runtime, open_runtime
from .server import hypercorn_config, serve

__all__ = ["Node", "open_node", "run", "serve_node"]

logger = logging.getLogger("towtruck")


class Node:
    """A running node, as :func:`open_node` gives it.

    Attributes:
        url: Base URL of its HTTP surface, ``http://127.0.0.1:PORT``.
        address: Its ``host:port``.
        client: Calls actors through this node.
        runtime: Its actors, collector and statistics.
    """

    def __init__(self, runtime: Runtime, url: str, stop_http: trio.Event) -> None:
        self.runtime = runtime
        self.url = url
        self.address = Address.parse(url.removeprefix("http://"))
        self.client: Client = runtime.client
        self._stop_http = stop_http

    def __repr__(self) -> str:
        return f"<Node {self.address}>"

    async def stop(self) -> None:
        """Stop gracefully: no new calls, calls in flight finish, every actor's
        ``deactivate`` runs, the server closes. Takes at most about twice
        ``shutdown_timeout``. Safe to call more than once."""
        self._stop_http.set()
        await self.runtime.stop()


@asynccontextmanager
async def open_node(
    create_actor: Factory, *, host: str = "127.0.0.1", port: int = 0, **settings: Any
) -> AsyncIterator[Node]:
    """Run a node inside the caller's trio program for the duration of the block.

    ``port=0`` (the default here) binds a free port; ``node.url`` tells which. Other
    settings are :class:`~towtruck.Settings` names, with ``TOWTRUCK_*`` variables
    filling in those not given.

    The node's runtime and HTTP server run in nurseries this block opens: an error in
    either propagates out of the block (as an exception group). Leaving the block
    stops the server (requests in flight get ``shutdown_timeout`` to finish) and then
    the runtime (see :meth:`Runtime.stop`); if the block is left by cancellation, the
    server's connections are cut at once, while the runtime still stops gracefully.
    No task the node started outlives the block.
    """
    async with open_runtime(create_actor, host=host, port=port, **settings) as runtime:
        stop_http = trio.Event()
        config = hypercorn_config(runtime.settings)
        # The server runs in its own nursery inside the runtime's block, so leaving
        # stops HTTP first (it stops accepting and lets requests in flight finish,
        # while the runtime still serves them), then the runtime.
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                partial(serve, App(runtime=runtime), config, shutdown_trigger=stop_http.wait)
            )
            node = Node(runtime, urls[0], stop_http)
            runtime.node_id = str(node.address)
            try:
                yield node
            finally:
                stop_http.set()


async def serve_node(
    create_actor: Factory,
    *,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
    **settings: Any,
) -> None:
    """Run a node until SIGINT (Ctrl-C) or SIGTERM, then stop it gracefully; a second
    signal during the graceful stop exits the process at once (status 1).

    Must run in the main thread (it installs signal handlers for its duration).
    Reports the node through ``task_status`` once it serves.
    """
    stopping = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stopping.is_set():
                        logger.info("%s: stopping gracefully (again to stop at once)", name)
                        stopping.set()
                    else:
                        logger.warning("%s again: exiting at once", name)
                        os._exit(1)

            nursery.start_soon(watch_signals)
            async with open_node(create_actor, **settings) as node:
                logger.info("towtruck node serving on %s", node.url)
                task_status.started(node)
                await stopping.wait()
            nursery.cancel_scope.cancel()


def run(create_actor: Factory, *, port: int = 8080, **settings: Any) -> None:
    """Serve a node until Ctrl-C or SIGTERM: the one-liner for scripts.

    ``towtruck.run(create_actor, port=8080)`` blocks; it is ``trio.run`` of
    :func:`serve_node`, with logging to stderr if the program set up none.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(partial(serve_node, create_actor, port=port, **settings))
