"""Test helpers shipped as product: a cluster of real nodes in one trio program.

``async with towtruck.cluster(create_actor, size=3) as c:`` starts three nodes on free
loopback ports (real Hypercorn servers, real HTTP between them), joined to each other,
and stops them all on the way out.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..catalog import Factory
from ..node import Node, open_node
from ..storage.memory import MemoryStore, memory_store

__all__ = ["Cluster", "ClusterClient", "cluster"]


class ClusterClient:
    """Calls actors through the cluster's live nodes, taking turns."""

    def __init__(self, owner: Cluster) -> None:
        self._cluster = owner
        self._turn = itertools.count()

    async def invoke(self, actor_id: str | int, method: str, data: Any = None) -> Any:
        """Call an actor through the next live node (see :meth:`towtruck.Client.invoke`)."""
        live = self._cluster.live
        if not live:
            raise RuntimeError("every node of the cluster has stopped")
        node = live[next(self._turn) % len(live)]
        return await node.client.invoke(actor_id, method, data)


class Cluster:
    """Nodes started by :func:`cluster`.

    Attributes:
        nodes: Every node started, in order, stopped ones included.
        client: Calls actors through the live nodes in turn.
        store: The memory store the nodes share, unless they were given a
            ``state_store`` (then None).
    """

    def __init__(
        self, create_actor: Factory, settings: dict[str, Any], nursery: trio.Nursery
    ) -> None:
        self.nodes: list[Node] = []
        self.client = ClusterClient(self)
        self.store: MemoryStore | None = None
        self._create_actor = create_actor
        self._settings = settings
        self._nursery = nursery
        self._stopped: set[Node] = set()

    @property
    def live(self) -> list[Node]:
        """The nodes neither stopped nor killed."""
        return [node for node in self.nodes if node not in self._stopped]

    async def add_node(self, **settings: Any) -> Node:
        """Start one more node, joined to the cluster through a live node; returns once
        it has joined. ``settings`` override the cluster's for this node."""
        peers = [str(node.address) for node in self.live[:1]]
        merged = {**self._settings, "peers": peers, **settings}
        node: Node = await self._nursery.start(self._run_node, merged)
        self.nodes.append(node)
        return node

    async def stop(self, node: Node) -> None:
        """Stop a node gracefully (see :meth:`towtruck.Node.stop`)."""
        self._stopped.add(node)
        await node.stop()

    def kill(self, node: Node) -> None:
        """Stop a node abruptly: it answers nothing more (see :meth:`towtruck.Node.kill`)."""
        self._stopped.add(node)
        node.kill()

    def holders(self, actor_id: str) -> list[Node]:
        """The live nodes where ``actor_id`` is active (one, if all is well)."""
        return [node for node in self.live if actor_id in node.runtime.catalog]

    async def _run_node(
        self, settings: dict[str, Any], *, task_status: trio.TaskStatus[Node]
    ) -> None:
        async with open_node(self._create_actor, **settings) as node:
            task_status.started(node)
            await node.runtime.wait_stopped()


@asynccontextmanager
async def cluster(create_actor: Factory, size: int = 3, **settings: Any) -> AsyncIterator[Cluster]:
    """Run ``size`` nodes joined in a cluster, on free loopback ports, for the block.

    Each node is a real :func:`~towtruck.open_node` (Hypercorn on 127.0.0.1 port 0); they
    talk over real HTTP. ``settings`` apply to every node (``heartbeat_interval=0.2``
    makes failure detection quick in tests). Unless ``state_store`` says otherwise, the
    nodes share one memory store of their own (``memory://cluster-...``), so fencing
    between them can be tested in one process. On the way out every live node stops
    gracefully; no task outlives the block.
    """
    shared = None
    if "state_store" not in settings:
        shared = memory_store(f"cluster-{uuid.uuid4().hex}")
        settings["state_store"] = shared.url
    async with trio.open_nursery() as nursery:
        nodes = Cluster(create_actor, settings, nursery)
        nodes.store = shared
        try:
            for _ in range(size):
                await nodes.add_node()
            yield nodes
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as stopping:
                    for node in nodes.live:
                        stopping.start_soon(nodes.stop, node)
