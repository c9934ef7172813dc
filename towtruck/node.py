"""A node: the runtime and its HTTP server, started together in one nursery.

:func:`open_node` is the embedded way to run one; :func:`serve_node` adds signal
handling for processes (``towtruck serve``), and :func:`run` is its blocking one-liner.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from .address import Address
from .app import App
from .catalog import Factory
from .client import Client
from .peers import open_router
from .router import Router
from .runtime import Runtime
from .server import bind, hypercorn_config, serve
from .settings import Settings

__all__ = ["Node", "configure_logging", "open_node", "run", "serve_node", "tune_garbage_collector"]

logger = logging.getLogger("towtruck")


class Node:
    """A running node, as :func:`open_node` gives it.

    Attributes:
        url: Base URL of its HTTP surface, ``http://127.0.0.1:PORT``.
        address: The ``host:port`` it is reached at (``advertise``, or the bound one).
        client: Calls actors through this node, wherever they live in the cluster.
        runtime: Its actors, collector and statistics.
        router: Its view of the cluster and how it routes calls.
    """

    def __init__(self, runtime: Runtime, router: Router, url: str, nursery: trio.Nursery) -> None:
        self.runtime = runtime
        self.router = router
        self.url = url
        self.address = Address.parse(router.me)
        self.client: Client = runtime.client
        self._nursery = nursery
        self._stop_http = trio.Event()
        self._killed = False

    def __repr__(self) -> str:
        return f"<Node {self.address}>"

    async def stop(self) -> None:
        """Stop gracefully: leave the cluster (the peers stop placing actors here),
        deactivate every actor after its mailbox and let the calls in flight finish
        (see :meth:`Runtime.stop`), then close the server, whose requests in flight get
        ``shutdown_timeout`` more. Safe to call more than once."""
        if self._killed:
            return
        elsewhere = await self.router.leave()
        await self.runtime.stop(route_elsewhere=elsewhere)
        self._stop_http.set()

    def kill(self) -> None:
        """Stop abruptly, as a crash would: every connection closes at once, turns are
        cancelled, no ``deactivate`` runs, peers are not told. For tests of failure; it
        cancels the ``open_node`` block it is called on. Not a checkpoint."""
        self._killed = True
        self.runtime.abort()
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_node(
    create_actor: Factory,
    *,
    port: int = 0,
    listen_fds: Sequence[int] = (),
    **settings: Any,
) -> AsyncIterator[Node]:
    """Run a node inside the caller's trio program for the duration of the block.

    ``port=0`` (the default here) binds a free port; ``node.url`` tells which. Other
    settings are :class:`~towtruck.Settings` names, with ``TOWTRUCK_*`` variables
    filling in those not given; ``peers=["host:port"]`` joins a cluster.
    ``listen_fds`` are sockets already listening to serve on instead of binding
    ``host:port`` (how ``towtruck serve --workers`` hands its workers their sockets).

    The node's runtime (its actors and background work) and its HTTP server run as
    sibling tasks of a nursery this block opens: an error in either takes the node
    down and propagates out of the block (as an exception group). Leaving the block
    stops the node gracefully (see :meth:`Node.stop`), even when it is left by
    cancellation. No task the node started outlives the block.
    """
    config = Settings.load(port=port, **settings)
    runtime = Runtime(create_actor, config)
    http_config = hypercorn_config(config)
    sockets, urls = bind(http_config, listen_fds)
    me = config.advertise or urls[0].removeprefix("http://")
    runtime.node_id = me
    exposed = [
        address
        for address in (me, *(url.removeprefix("http://") for url in urls))
        if not Address.parse(address).is_loopback
    ]
    if config.cluster_key is None and exposed:
        logger.warning(
            "serving on %s with no cluster key: anyone who reaches it can add or remove"
            " nodes and send calls as a node would; set cluster_key (--cluster-key)",
            exposed[0],
        )
    async with (
        open_router(runtime, me, config.cluster_key) as router,
        trio.open_nursery() as nursery,
    ):
        node = Node(runtime, router, urls[0], nursery)
        await nursery.start(runtime.serve)
        app = App(runtime=runtime)
        await nursery.start(
            partial(
                serve,
                app,
                http_config,
                sockets=sockets,
                fast=app,
                request_timeout=config.request_timeout,
                shutdown_trigger=node._stop_http.wait,
            )
        )
        await router.start(config.peers)
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 3 * config.shutdown_timeout + 10
                await node.stop()


async def serve_node(
    create_actor: Factory,
    *,
    parent_fd: int | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
    **settings: Any,
) -> None:
    """Run a node until SIGINT (Ctrl-C) or SIGTERM, then stop it gracefully; a second
    signal during the graceful stop exits the process at once (status 1).

    Must run in the main thread (it installs signal handlers for its duration).
    Reports the node through ``task_status`` once it serves. ``parent_fd`` is the read
    end of a pipe whose other end the parent process holds: when it closes (the parent
    died, even by SIGKILL), the node stops gracefully too (``--workers`` uses this).
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

            async def watch_parent(fd: int) -> None:
                await trio.lowlevel.wait_readable(fd)  # readable only at EOF: it is gone
                if not stopping.is_set():
                    logger.warning("the parent process is gone: stopping gracefully")
                    stopping.set()

            nursery.start_soon(watch_signals)
            if parent_fd is not None:
                nursery.start_soon(watch_parent, parent_fd)
            async with open_node(create_actor, **settings) as node:
                tune_garbage_collector()
                logger.info("towtruck node serving on %s", node.url)
                task_status.started(node)
                await stopping.wait()
            nursery.cancel_scope.cancel()


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector's pauses rare, for a process that is a node.

    Python's defaults run a full collection, which visits every live object, every
    few hundred thousand allocations; a node allocates that many in a few seconds and
    keeps two or three objects per idle actor, so with 100,000 actors in memory each
    pause took ~170 ms and set the p99 latency (measured: see benchmarks/RESULTS.md).
    Collecting young objects every 10,000 allocations instead of 700, and older ones
    fifty times less often, brought the p99 to 7 ms. What is alive once the node serves
    (modules, the app) is frozen out of collection altogether. ``towtruck serve`` and
    :func:`run` do this; a program embedding a node with :func:`open_node` decides for
    itself (calling this is fine).
    """
    gc.set_threshold(10_000, 50, 50)
    gc.collect()
    gc.freeze()


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` (unless the program set up logging already), without
    httpx's line per request between nodes."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(create_actor: Factory, **settings: Any) -> None:
    """Serve a node until Ctrl-C or SIGTERM: the one-liner for scripts.

    ``towtruck.run(create_actor, port=8080)`` blocks; it is ``trio.run`` of
    :func:`serve_node`, with logging to stderr if the program set up none. Settings
    not given come from ``TOWTRUCK_*`` variables, then the defaults (port 8080).
    """
    if "port" not in settings:  # open_node's own default is 0
        settings["port"] = Settings.load(environ=settings.get("environ")).port
    configure_logging("info")
    trio.run(partial(serve_node, create_actor, **settings))
