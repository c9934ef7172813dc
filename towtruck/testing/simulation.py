"""A cluster of real towtruck nodes simulated in one trio program, on trio's autojump
clock: thousands of simulated seconds in a few real ones, and every run replayed
exactly from its seed (FoundationDB's deterministic simulation is the model).

Each node is the real thing (its runtime, membership, gossip, directory and router);
only the sockets are replaced, by a :class:`~towtruck.testing.network.SimulatedNetwork`
that delays, drops, duplicates and partitions messages. Use :func:`simulate` from a
plain test function, or :func:`open_simulation` inside a trio test that runs on an
autojump clock::

    def test_my_actors_survive_a_partition():
        async def scenario(sim):
            await sim.start(10)
            await sim.call("cart-1", "add", {"item": 3})
            sim.partition(sim.live[:6], sim.live[6:])
            await sim.converged()
            ...
            sim.check()

        towtruck.testing.simulate(scenario, create_actor, seed=1)

A failure is raised as :class:`SimulationFailed` naming the seed that replays it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import trio

from .. import codec
from ..calls import CallContext
from ..catalog import Factory
from ..cluster.membership import MemberState
from ..cluster.router import Router
from ..runtime import Runtime
from ..server.forwarded import ForwardedCalls
from ..server.routes import Routes
from ..settings import Settings
from ..transport.peers import assemble, stop_member
from .network import SimulatedNetwork, SimulatedPeers

__all__ = ["SimulatedNode", "Simulation", "SimulationFailed", "open_simulation", "simulate"]

T = TypeVar("T")

#: Where simulated wall clocks start: versions of membership decisions count from it.
EPOCH_NS: Final = 1_750_000_000 * 10**9
#: Settings a simulation starts from (a node's own defaults otherwise): state in
#: memory, each node its own store unless ``state_store`` names a shared one.
SIMULATION_SETTINGS: Final = {"state_store": "memory:"}


class SimulationFailed(AssertionError):
    """A simulated run failed; :attr:`seed` replays it."""

    def __init__(self, message: str, seed: int | str) -> None:
        super().__init__(f"{message} (seed={seed!r}: run it again with this seed to replay)")
        self.seed = seed


class SimulatedNode:
    """One node of a :class:`Simulation`."""

    def __init__(self, address: str, runtime: Runtime, router: Router) -> None:
        self.address = address
        self.runtime = runtime
        self.router = router
        self.routes = Routes(runtime)
        #: Runs the calls peers forward here, as a served node's lanes do.
        self.forwarded = ForwardedCalls(runtime, debug=runtime.settings.debug)
        self.scope = trio.CancelScope()

    @property
    def placement(self) -> tuple[str, ...]:
        """The nodes this one places actors on."""
        return self.router.membership.placement()

    def __repr__(self) -> str:
        return f"<SimulatedNode {self.address}>"


class Simulation:
    """Simulated nodes on one :class:`SimulatedNetwork` (see the module's docstring).

    Attributes:
        network: The network between the nodes: partition, slow, loss.
        nodes: Every node started, stopped ones included, in order.
        seed: The seed of the run.
    """

    def __init__(
        self,
        create_actor: Factory,
        network: SimulatedNetwork,
        settings: dict[str, Any],
        nursery: trio.Nursery,
        seed: int | str,
    ) -> None:
        self.network = network
        self.nodes: list[SimulatedNode] = []
        self.seed = seed
        self.random = random.Random(f"{seed}/calls")
        self._create_actor = create_actor
        self._settings = {**SIMULATION_SETTINGS, **settings}
        self._nursery = nursery
        self._names = itertools.count(1)
        self._calls_late = 0

    @property
    def settings(self) -> Settings:
        """The settings every node runs with."""
        return Settings(**self._settings)

    @property
    def live(self) -> list[SimulatedNode]:
        """The nodes serving (hung ones included: they run, cut off)."""
        return [node for node in self.nodes if self.network.nodes.get(node.address) is node]

    def node(self, address: str) -> SimulatedNode:
        """The live node at ``address``."""
        return self.network.nodes[address]

    async def add(
        self, address: str | None = None, *, peers: Sequence[str] | None = None, **settings: Any
    ) -> SimulatedNode:
        """Start a node (at ``address``, or ``nN:1``) that joins through ``peers`` (the
        first live node by default); returns once it has joined and settled."""
        if address is None:
            address = f"n{next(self._names)}:1"
        if peers is None:
            peers = [node.address for node in self.live[:1]]
        config = Settings(**{**self._settings, **settings, "peers": list(peers)})
        runtime = Runtime(self._create_actor, config)
        runtime.node_id = address
        router = assemble(
            runtime,
            address,
            SimulatedPeers(self.network, address),
            wall_clock=lambda: EPOCH_NS + int(trio.current_time() * 1e9),
        )
        router.gossip.random.seed(f"{self.seed}/{address}")
        node = SimulatedNode(address, runtime, router)
        self.network.nodes[address] = node
        self.network.hung.discard(address)
        self.nodes.append(node)
        await self._nursery.start(self._run, node)
        await router.gossip.start(config.peers)
        return node

    async def start(self, count: int, *, at_once: bool = False) -> list[SimulatedNode]:
        """Start ``count`` nodes, each joining through the first; one after the other,
        or all at once. Returns them."""
        started: list[SimulatedNode] = []
        if not self.live:
            started.append(await self.add())
            count -= 1
        if at_once:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(self._add_into, started)
        else:
            for _ in range(count):
                started.append(await self.add())
        return started

    async def _add_into(self, started: list[SimulatedNode]) -> None:
        started.append(await self.add())

    async def _run(self, node: SimulatedNode, *, task_status: trio.TaskStatus[None]) -> None:
        with node.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.runtime.serve)
                task_status.started()
        self._gone(node)

    def kill(self, node: SimulatedNode) -> None:
        """Stop ``node`` as a crash would: nothing more is answered there (connections
        are refused), nothing runs, no peer is told."""
        self._gone(node)
        node.runtime.abort()
        node.scope.cancel()

    def hang(self, node: SimulatedNode) -> None:
        """Freeze ``node``: it swallows what it is sent and sends nothing, until
        :meth:`unhang`."""
        self.network.hung.add(node.address)

    def unhang(self, node: SimulatedNode) -> None:
        """Let a hung node talk again."""
        self.network.hung.discard(node.address)

    async def stop(self, node: SimulatedNode) -> None:
        """Stop ``node`` gracefully: it leaves the cluster, then stops."""
        await stop_member(node.runtime, node.router)
        self.kill(node)

    async def restart(self, node: SimulatedNode, *, graceful: bool = True) -> SimulatedNode:
        """Stop ``node`` (gracefully, or as a crash) and start a new one at its address,
        joining through another live node."""
        if graceful:
            await self.stop(node)
        else:
            self.kill(node)
        peers = [other.address for other in self.live if other is not node][:1]
        return await self.add(node.address, peers=peers)

    def partition(self, *groups: Sequence[SimulatedNode]) -> None:
        """Cut the network between ``groups`` of nodes (see
        :meth:`SimulatedNetwork.partition`)."""
        self.network.partition(*([node.address for node in group] for group in groups))

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self.network.heal()

    async def call(
        self,
        actor_id: str,
        method: str,
        data: Any = None,
        *,
        via: SimulatedNode | None = None,
    ) -> Any:
        """Call an actor through ``via`` (a live node drawn from the seed otherwise);
        returns its answer, decoded. A call that outlives its deadline fails the run."""
        node = via or self.random.choice(self.live)
        timeout = node.runtime.settings.call_timeout
        context = CallContext((), trio.current_time() + timeout)
        started = trio.current_time()
        try:
            answer = await node.runtime.invoke(actor_id, method, data, context)
        finally:
            if trio.current_time() - started > timeout + 1:
                self._calls_late += 1
                raise SimulationFailed(
                    f"a call to {actor_id!r} took {trio.current_time() - started:.1f} s,"
                    f" past its deadline ({timeout:g} s)",
                    self.seed,
                )
        return codec.loads(answer)

    def agreed(self, nodes: Sequence[SimulatedNode] | None = None) -> bool:
        """Whether ``nodes`` (the live ones not hung, by default) all place actors on
        exactly ``nodes``."""
        if nodes is None:
            nodes = [node for node in self.live if node.address not in self.network.hung]
        expected = tuple(sorted(node.address for node in nodes))
        return all(node.placement == expected for node in nodes)

    async def converged(
        self, nodes: Sequence[SimulatedNode] | None = None, *, within: float = 600.0
    ) -> float:
        """Wait until ``nodes`` agree (see :meth:`agreed`); returns the simulated
        seconds it took. Fails the run if they do not within ``within`` seconds."""
        started = trio.current_time()
        with trio.move_on_after(within):
            # Polled on the simulated clock: views change in too many places for an event.
            while not self.agreed(nodes):  # noqa: ASYNC110
                await trio.sleep(0.05)
            return trio.current_time() - started
        views = {node.address: node.placement for node in (nodes or self.live)}
        raise SimulationFailed(f"views did not agree within {within:g} s: {views}", self.seed)

    def holders(self, actor_id: str) -> list[str]:
        """The live nodes where ``actor_id`` is active."""
        return [node.address for node in self.live if actor_id in node.runtime.catalog]

    def check(self) -> None:
        """Fail the run if an actor is active on two nodes."""
        seen: dict[str, str] = {}
        for node in self.live:
            for actor_id in node.runtime.catalog.ids():
                if actor_id in seen:
                    raise SimulationFailed(
                        f"actor {actor_id!r} is active on {seen[actor_id]} and on {node.address}",
                        self.seed,
                    )
                seen[actor_id] = node.address

    async def watch(self, every: float = 0.25) -> None:
        """Run :meth:`check` every ``every`` simulated seconds, for as long as the
        caller lets it (start it in a nursery)."""
        while True:
            self.check()
            await trio.sleep(every)

    def cost(self) -> dict[str, float]:
        """Messages and bytes the live nodes sent so far, per node (mean and most)."""
        live = [node.address for node in self.live]
        if not live:
            return {"messages": 0.0, "bytes": 0.0, "most_messages": 0.0}
        sent = self.network.sent
        return {
            "messages": sum(sent[a] for a in live) / len(live),
            "bytes": sum(self.network.sent_bytes[a] for a in live) / len(live),
            "most_messages": float(max(sent[a] for a in live)),
        }

    def down_in(self, address: str) -> int:
        """How many live nodes have ``address`` out of placement."""
        return sum(
            1
            for node in self.live
            if node.address != address
            and node.router.membership.state(address)
            in (MemberState.DOWN, MemberState.REMOVED, None)
        )

    def _gone(self, node: SimulatedNode) -> None:
        if self.network.nodes.get(node.address) is node:
            del self.network.nodes[node.address]


@asynccontextmanager
async def open_simulation(
    create_actor: Factory,
    *,
    seed: int | str = 0,
    latency: tuple[float, float] = (0.0005, 0.002),
    loss: float = 0.0,
    duplicate: float = 0.0,
    **settings: Any,
) -> AsyncIterator[Simulation]:
    """A :class:`Simulation` for the block (inside a trio run on an autojump clock:
    pytest-trio's ``autojump_clock`` fixture, or :func:`simulate`). ``settings`` apply
    to every node. On the way out every node is stopped at once."""
    network = SimulatedNetwork(seed, latency=latency, loss=loss, duplicate=duplicate)
    async with trio.open_nursery() as nursery:
        simulation = Simulation(create_actor, network, settings, nursery, seed)
        try:
            yield simulation
        finally:
            for node in simulation.live:
                simulation.kill(node)
            nursery.cancel_scope.cancel()


def simulate(
    scenario: Callable[[Simulation], Awaitable[T]],
    create_actor: Factory,
    *,
    seed: int | str = 0,
    latency: tuple[float, float] = (0.0005, 0.002),
    loss: float = 0.0,
    duplicate: float = 0.0,
    within: float = math.inf,
    **settings: Any,
) -> T:
    """Run ``scenario(simulation)`` in a trio run of its own on an autojump clock, and
    return what it returns. Every chance in the run (the network's, the probes', the
    scheduler's order) is drawn from ``seed``: the same seed replays the same run.
    ``within``: simulated seconds the scenario may take.

    Raises:
        SimulationFailed: the scenario failed (its error is the cause); the message
            names the seed.
    """
    _seed_scheduler(seed)
    # Here rather than at the top: trio.testing imports pytest where it is installed,
    # and every ``import towtruck`` would pay for it.
    import trio.testing

    async def main() -> T:
        with trio.fail_after(within):
            async with open_simulation(
                create_actor, seed=seed, latency=latency, loss=loss, duplicate=duplicate, **settings
            ) as simulation:
                return await scenario(simulation)

    try:
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # the one error a nursery wrapped
        if isinstance(exc, SimulationFailed):
            raise exc from None
        raise SimulationFailed(f"the scenario failed: {exc!r}", seed) from exc


def _seed_scheduler(seed: int | str) -> None:
    """Seed the order in which trio runs tasks that are ready at the same moment (it
    draws it at random, from a module-level source: trio has no public way)."""
    from trio._core import _run

    source = getattr(_run, "_r", None)
    if isinstance(source, random.Random):
        source.seed(f"{seed}/scheduler")
