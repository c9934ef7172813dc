"""The membership protocol of real nodes (membership, gossip, directory, router) on
trio's autojump clock, the nodes talking through memory (tests/memory_cluster.py):
thousands of virtual seconds in a blink, and timings asserted exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

import towtruck
from tests.actors import create_counter
from tests.helpers import wait_until
from tests.memory_cluster import MemoryNode, Network, memory_node
from towtruck.cluster import placement
from towtruck.cluster.membership import MemberState

SETTINGS = {"heartbeat_interval": 1.0, "heartbeat_misses": 3, "bloom_interval": 1.0}
#: Virtual seconds a test may take.
BOUND = 600
NAMES = ["a:1", "b:1", "c:1"]


@asynccontextmanager
async def three_nodes(network: Network) -> AsyncIterator[list[MemoryNode]]:
    """a alone, b joining through a, c through b (it learns of a by gossip); yields
    once all three place on all three."""
    async with AsyncExitStack() as stack:
        nodes = []
        for name, peers in zip(NAMES, [(), ("a:1",), ("b:1",)], strict=True):
            node = memory_node(network, name, create_counter, peers=peers, **SETTINGS)
            nodes.append(await stack.enter_async_context(node))
        await until_placement(nodes, tuple(NAMES))
        yield nodes


async def until_placement(nodes: list[MemoryNode], expected: tuple[str, ...]) -> None:
    async def agreed() -> bool:
        return all(node.router.membership.placement() == expected for node in nodes)

    await wait_until(agreed)


async def test_nodes_joining_through_different_peers_all_see_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BOUND):
        async with three_nodes(Network()) as nodes:
            started = trio.current_time()
            await trio.sleep(100)  # a hundred heartbeat rounds change nothing
            assert all(n.router.membership.placement() == tuple(NAMES) for n in nodes)
            assert trio.current_time() - started == 100


async def test_a_peer_that_stops_answering_leaves_placement_after_its_misses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    with trio.fail_after(BOUND):
        async with three_nodes(network) as nodes:
            hung_at = trio.current_time()
            network.hung.add("c:1")
            await until_placement(nodes[:2], ("a:1", "b:1"))
            took = trio.current_time() - hung_at
            # Within an interval a probe, which times out after one; half an interval
            # for the probes through the others; suspected for two intervals, seen at
            # the next round: no sooner, and soon.
            assert 3 <= took <= 6, took
            assert nodes[0].router.membership.state("c:1") is MemberState.DOWN
            network.hung.discard("c:1")
            await until_placement(nodes, tuple(NAMES))


async def test_a_peer_that_refuses_a_call_is_out_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = Network()
    with trio.fail_after(BOUND):
        async with three_nodes(network) as nodes:
            network.refusing.add("c:1")
            refused_at = trio.current_time()
            owned = next(f"x{i}" for i in range(1000) if placement.owner(f"x{i}", NAMES) == "c:1")
            with pytest.raises(towtruck.PeerUnavailable):
                await nodes[0].runtime.client.invoke(owned, "increment")
            # Nothing listens there: no heartbeats to miss first.
            assert nodes[0].router.membership.state("c:1") is MemberState.DOWN
            assert trio.current_time() - refused_at < 0.1
            assert await nodes[0].runtime.client.invoke(owned, "increment") == 1
            assert owned in nodes[0].runtime.catalog or owned in nodes[1].runtime.catalog
            network.refusing.discard("c:1")


async def test_calls_run_on_their_owners_once_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BOUND):
        async with three_nodes(Network()) as nodes:
            ids = [f"id{i}" for i in range(60)]
            for i, actor_id in enumerate(ids):
                entry = nodes[i % 3]
                assert await entry.runtime.client.invoke(actor_id, "increment") == 1
                assert await entry.runtime.client.invoke(actor_id, "increment") == 2
            for actor_id in ids:
                holders = [n.address for n in nodes if actor_id in n.runtime.catalog]
                assert holders == [placement.owner(actor_id, NAMES)]
            assert sum(n.router.forwarded for n in nodes) > 0
