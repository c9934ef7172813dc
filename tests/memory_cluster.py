"""Nodes of a cluster in one trio program, talking through method calls instead of
sockets, so that their real membership, gossip, directory and router run on trio's
autojump clock. Links can be cut (a refused connection) or made to hang (a peer that
never answers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from towtruck import codec
from towtruck.calls import CallContext
from towtruck.catalog import Factory
from towtruck.cluster import wire
from towtruck.cluster.router import Router
from towtruck.errors import PeerUnavailable
from towtruck.runtime import Runtime
from towtruck.server.routes import Routes
from towtruck.settings import Settings
from towtruck.transport.peers import assemble, stop_member


class Network:
    """Who is reachable: every node by address; ``refusing`` ones refuse connections,
    ``hung`` ones accept and never answer."""

    def __init__(self) -> None:
        self.nodes: dict[str, MemoryNode] = {}
        self.refusing: set[str] = set()
        self.hung: set[str] = set()

    async def reach(self, peer: str, sender: str) -> MemoryNode:
        await trio.lowlevel.checkpoint()
        if peer in self.hung or sender in self.hung:  # a hung node sends nothing either
            await trio.sleep_forever()
        node = self.nodes.get(peer)
        if node is None or peer in self.refusing:
            raise PeerUnavailable(f"{peer} refused a connection", peer=peer, delivered=False)
        return node


class MemoryPeers:
    """A node's :class:`~towtruck.cluster.directory.PeerClient` over a :class:`Network`;
    every message goes through JSON, as it would on the wire."""

    def __init__(self, network: Network, me: str) -> None:
        self._network = network
        self._me = me

    async def forward(self, peer: str, envelope: bytes, deadline: float) -> bytes:
        node = await self._network.reach(peer, self._me)
        call = wire.decode_call(envelope)
        context = CallContext(call.chain, trio.current_time() + call.timeout, call.hops)
        return await node.runtime.invoke(
            call.actor_id, call.method, call.data, context, existing=call.existing
        )

    async def post(self, peer: str, path: str, payload: Any) -> Any:
        node = await self._network.reach(peer, self._me)
        assert path == "/cluster/heartbeat", path
        return _through_json(await node.routes.heartbeat(_through_json(payload)))

    async def get(self, peer: str, path: str) -> Any:
        node = await self._network.reach(peer, self._me)
        url = urlsplit(path)
        if url.path.startswith("/query/"):
            return _through_json(node.routes.query(unquote(url.path.removeprefix("/query/"))))
        assert url.path == "/getbloom", path
        query = parse_qs(url.query)
        since = query.get("since", [None])[0]
        return _through_json(node.routes.getbloom(since, fresh="fresh" in query))

    def prune(self, keep: set[str]) -> None:
        pass

    def interrupt(self, peer: str) -> None:
        pass

    def stalled(self, peer: str, after: float) -> bool:
        return False


def _through_json(value: Any) -> Any:
    return codec.loads(codec.dumps(value))


class MemoryNode:
    def __init__(self, runtime: Runtime, router: Router) -> None:
        self.runtime = runtime
        self.router = router
        self.routes = Routes(runtime)
        self.address = router.me


@asynccontextmanager
async def memory_node(
    network: Network, address: str, create_actor: Factory, **settings: Any
) -> AsyncIterator[MemoryNode]:
    """A node at ``address`` on ``network`` for the duration of the block; it joins
    ``peers`` (a setting) once it serves, and leaves gracefully at the end."""
    config = Settings(**settings)
    runtime = Runtime(create_actor, config)
    runtime.node_id = address
    router = assemble(runtime, address, MemoryPeers(network, address))
    node = network.nodes[address] = MemoryNode(runtime, router)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.serve)
        await router.gossip.start(config.peers)
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True):
                await stop_member(runtime, router)
                del network.nodes[address]
