"""A node: the runtime and its HTTP server, started together in one nursery.

:func:`open_node` is the embedded way to run one; :func:`serve_node` adds signal
handling for processes (``towtruck serve``), and :func:`run` is its blocking one-liner.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from .catalog import Factory
from .client import Client
from .cluster.router import Router
from .ids import Address
from .process import configure_logging, stop_on_signals, tune_garbage_collector
from .runtime import Runtime
from .server.app import App
from .server.serve import listen, serve
from .settings import Settings, bind_error, redact_url
from .transport.peers import open_router, stop_member

__all__ = ["Node", "open_node", "run", "serve_node"]

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
        await stop_member(self.runtime, self.router)
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
    local_lanes: Mapping[str, str] | None = None,
    **settings: Any,
) -> AsyncIterator[Node]:
    """Run a node inside the caller's trio program for the duration of the block.

    ``port=0`` (the default here) binds a free port; ``node.url`` tells which. Other
    settings are :class:`~towtruck.Settings` names, the defaults filling in those not
    given (an embedded node reads no ``TOWTRUCK_*`` variables: the program that embeds
    it decides); ``peers=["host:port"]`` joins a cluster.
    ``listen_fds`` are sockets already listening to serve on instead of binding
    ``host:port`` (how ``towtruck serve --workers`` hands its workers their sockets,
    Unix domain sockets among them); ``local_lanes`` maps peers of this host to the
    Unix domain sockets they listen on (see :func:`~towtruck.transport.lanes.open_lanes`).

    The node's runtime (its actors and background work) and its HTTP server run as
    sibling tasks of a nursery this block opens: an error in either takes the node
    down and propagates out of the block (as an exception group). A ``host`` and
    ``port`` it cannot listen on raise :class:`~towtruck.SettingsError` naming them.
    Leaving the block stops the node gracefully (see :meth:`Node.stop`), even when it
    is left by cancellation. No task the node started outlives the block.
    """
    config = Settings.load(environ={}, port=port, **settings)
    runtime = Runtime(create_actor, config)
    try:
        sockets, urls = listen(config, listen_fds)
    except OSError as exc:  # a port in use, a host not of this machine...
        raise bind_error(config, exc) from exc
    me = config.advertise or urls[0].removeprefix("http://")
    runtime.node_id = me
    runtime.siblings = [address for address in local_lanes or () if address != me]
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
        open_router(runtime, me, config.cluster_key, local_lanes) as router,
        trio.open_nursery() as nursery,
    ):
        node = Node(runtime, router, urls[0], nursery)
        await nursery.start(runtime.serve)
        app = App(runtime=runtime)
        await nursery.start(
            partial(serve, app, config, sockets=sockets, shutdown_trigger=node._stop_http.wait)
        )
        await router.gossip.start(config.peers)
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + config.shutdown_budget
                await node.stop()


async def serve_node(
    create_actor: Factory,
    *,
    parent_fd: int | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
    **settings: Any,
) -> None:
    """Run a node until SIGINT (Ctrl-C) or SIGTERM, then stop it gracefully; a second
    signal exits the process at once (status 1), even while the event loop is held by
    blocking code.

    Must run in the main thread (it installs signal handlers for its duration).
    Reports the node through ``task_status`` once it serves. ``parent_fd`` is the read
    end of a pipe whose other end the parent process holds: when it closes (the parent
    died, even by SIGKILL), the node stops gracefully too (``--workers`` uses this).
    """
    stopping = trio.Event()
    with stop_on_signals(stopping):
        async with trio.open_nursery() as nursery:

            async def watch_parent(fd: int) -> None:
                await trio.lowlevel.wait_readable(fd)  # readable only at EOF: it is gone
                if not stopping.is_set():
                    logger.warning("the parent process is gone: stopping gracefully")
                    stopping.set()

            if parent_fd is not None:
                nursery.start_soon(watch_parent, parent_fd)
            async with open_node(create_actor, **settings) as node:
                tune_garbage_collector()
                logger.info("towtruck node serving on %s (%s)", node.url, _summary(node))
                logger.debug("settings: %r", node.runtime.settings)
                task_status.started(node)
                await stopping.wait()
            nursery.cancel_scope.cancel()


def run(create_actor: Factory, **settings: Any) -> None:
    """Serve a node until Ctrl-C or SIGTERM: the one-liner for scripts.

    ``towtruck.run(create_actor, port=8080)`` blocks; it is ``trio.run`` of
    :func:`serve_node`, with logging to stderr at ``log_level`` if the program set up
    none. Settings not given come from ``TOWTRUCK_*`` variables, then the defaults
    (port 8080).

    Raises:
        SettingsError: a bad setting (before anything starts).
    """
    configure_logging("warning")  # until the settings are read: their warnings show
    config = Settings.load(**settings)  # open_node's own default port is 0, not 8080
    configure_logging(config.log_level, config.log_format)
    trio.run(partial(serve_node, create_actor, **dataclasses.asdict(config)))


def _summary(node: Node) -> str:
    """The settings an operator looks for first, for the node's start line."""
    runtime = node.runtime
    settings = runtime.settings
    parts = [
        f"max_actors={settings.max_actors}",
        f"state_store={redact_url(settings.state_store)}",
        f"peers={','.join(settings.peers) or 'none'}",
        f"cluster_key={'set' if settings.cluster_key else 'none'}",
        f"metrics={'on' if settings.metrics else 'totals only'}",
        f"tracing={'on' if runtime.tracer is not None else 'off'}",
    ]
    return ", ".join(parts)
