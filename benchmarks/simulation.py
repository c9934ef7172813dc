"""What membership costs per node as the cluster grows, on the simulated cluster of
``towtruck.testing`` (real nodes, a simulated network, trio's autojump clock).

    python benchmarks/simulation.py                    # N = 10, 50, 100, 200
    python benchmarks/simulation.py --simulated-sizes 10 50 500  # others
    python benchmarks/simulation.py --quick            # N = 10 and 50, for CI

For each N, with a heartbeat interval of 1 s and a network latency of 0.5-2 ms each
way: the nodes join all at once and settle; then, over 60 idle simulated seconds, the
messages and bytes each node sends per second (probes, their answers, gossip, filter
fetches; mean over the nodes, and the most any node sent), and the filters fetched;
then a node stops answering (a frozen host: no connection is refused) and the time
until every other node has it out of placement (detection and dissemination); then a
node joins and the time until every node places on it. Simulated time does not depend
on the machine; the real seconds each size took are printed too.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio
from _common import Figure, Figures, common_arguments, table

from towtruck.testing import Simulation, simulate

SIZES = (10, 50, 100, 200)
IDLE = 60.0


class Greeter:
    def __init__(self, id: str, client: Any) -> None:
        self.id = id

    async def hello(self, data: Any) -> dict[str, str]:
        return {"hello": f"from actor {self.id}"}


async def measure(sim: Simulation, size: int, figures: Figures) -> None:
    """Start ``size`` nodes and record this size's figures."""
    await sim.start(size, at_once=True)
    await sim.converged(within=300)
    await trio.sleep(10)  # the joins' rumours die down
    live = [node.address for node in sim.live]
    sent, sent_bytes = dict(sim.network.sent), dict(sim.network.sent_bytes)
    fetches = sum(node.router.directory.fetches for node in sim.live)
    await trio.sleep(IDLE)
    per_node = [(sim.network.sent[a] - sent.get(a, 0)) / IDLE for a in live]
    tag = f"N={size}"
    figures.add(f"idle node, messages sent per s, {tag}", "msg/s", sum(per_node) / len(live))
    figures.add(f"idle node, most messages sent per s, {tag}", "msg/s", max(per_node))
    total_bytes = sum(sim.network.sent_bytes[a] - sent_bytes.get(a, 0) for a in live)
    figures.add(f"idle node, bytes sent per s, {tag}", "B/s", total_bytes / len(live) / IDLE)
    fetched = sum(node.router.directory.fetches for node in sim.live) - fetches
    figures.add(f"idle node, filters fetched per s, {tag}", "/s", fetched / len(live) / IDLE)
    victim = sim.live[size // 2]
    sim.hang(victim)
    survivors = [node for node in sim.live if node is not victim]
    figures.add(
        f"a node stops answering: out everywhere, {tag}", "s", await sim.converged(survivors)
    )
    sim.kill(victim)
    await trio.sleep(5)
    started = trio.current_time()
    await sim.add()
    await sim.converged()
    figures.add(f"a node joins: placed everywhere, {tag}", "s", trio.current_time() - started)


def run(*, sizes: tuple[int, ...], seed: int = 1) -> list[Figure]:
    """Measure each of ``sizes`` in a simulation of its own."""
    figures = Figures()
    for size in sizes:
        started = time.perf_counter()

        async def scenario(sim: Simulation, size: int = size) -> None:
            await measure(sim, size, figures)

        simulate(scenario, Greeter, seed=seed, heartbeat_interval=1.0)
        figures.add(f"real seconds to simulate, N={size}", "s", time.perf_counter() - started)
    low, high = f"N={min(sizes)}", f"N={max(sizes)}"
    for what in ("idle node, messages sent per s", "idle node, bytes sent per s"):
        ratio = figures[f"{what}, {high}"].median / figures[f"{what}, {low}"].median
        figures.add(f"{what}, largest / smallest N", "x", ratio)
    what = "a node stops answering: out everywhere"
    ratio = figures[f"{what}, {high}"].median / figures[f"{what}, {low}"].median
    figures.add(f"{what}, largest / smallest N", "x", ratio)
    return list(figures.values())


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    parser.add_argument(
        "--simulated-sizes", type=int, nargs="+", help="simulated cluster sizes (10 50 100 200)"
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    sizes = args.simulated_sizes or ((10, 50) if args.quick else SIZES)
    return {"sizes": tuple(sizes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    print(table(run(**options(parser.parse_args()))))


if __name__ == "__main__":
    main()
