"""The outside client (issue 15): calls placed by the client against the same calls
through one node, over a 3-node cluster in this process.

``towtruck.cluster(Greeter, size=3)`` (the README's greeter) runs three real nodes (real HTTP, real
lanes between them) in this trio program. Once every node places actors on all three,
the 10,000 ids are activated, then two loads take turns, each ``--tasks`` (32) tasks
calling ``hello`` on random ids among the 10,000 for ``--duration`` seconds:

- **client**: ``towtruck.connect`` with all three nodes as seeds: each call goes
  straight to the node that owns its actor;
- **one node**: a plain ``httpx.AsyncClient`` (the client's connection limits) that
  POSTs every call to node 1, which forwards the two thirds its peers own over a lane.

For each: calls/s, the share of calls the nodes forwarded (their ``/health``
``forwarded``, summed, over the calls made), and the process's CPU time per call,
the client's and the three nodes' together (they share this process and one core):
what the forwarding hop costs, and what placing calls on the client's side saves.
The loads alternate, the client first every other repetition.

Run it alone with ``python benchmarks/remote.py [--quick] [--tasks N]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import trio
from _common import Figure, Figures, common_arguments, table

import towtruck
from towtruck.remote.client import limits

NODES = 3
RANDOM_IDS = 10_000
#: Time to wait for the nodes to agree on the members, in seconds.
SETTLE_SECONDS = 30.0

Call = Callable[[str], Awaitable[Any]]


class Greeter:
    """The README's greeter (``examples/greeter.py``, which is not importable from here)."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id

    async def hello(self, data: Any) -> dict[str, str]:
        return {"hello": f"from actor {self.id}"}


async def settled(http: httpx.AsyncClient, urls: list[str]) -> None:
    """Wait until every node places actors on every node."""
    with trio.fail_after(SETTLE_SECONDS):
        while True:
            placed = []
            for url in urls:
                members = (await http.get(f"{url}/health")).json()["members"]
                placed.append(sum(m["state"] in ("self", "alive") for m in members))
            if placed == [len(urls)] * len(urls):
                return
            await trio.sleep(0.05)


async def forwarded(http: httpx.AsyncClient, urls: list[str]) -> int:
    """Calls the nodes have sent on to another."""
    total = 0
    for url in urls:
        total += (await http.get(f"{url}/health")).json()["forwarded"]
    return total


async def load(call: Call, tasks: int, duration: float, seed: int) -> int:
    """``tasks`` tasks calling random ids for ``duration`` seconds; the calls answered."""
    answered = 0
    deadline = trio.current_time() + duration

    async def caller(n: int) -> None:
        nonlocal answered
        ids = random.Random(seed * 1000 + n)
        while trio.current_time() < deadline:
            await call(str(ids.randrange(1, RANDOM_IDS + 1)))
            answered += 1

    async with trio.open_nursery() as nursery:
        for n in range(tasks):
            nursery.start_soon(caller, n)
    return answered


async def run(*, duration: float, repeat: int, tasks: int) -> list[Figure]:
    """Start the cluster, activate the ids, then measure both loads ``repeat`` times."""
    figures = Figures()
    tag = f"remote client, {NODES} nodes, {tasks} tasks, random of {RANDOM_IDS:,}"
    settings = {"max_actors": 1_000_000, "max_inactivity": 3600}
    async with (
        towtruck.cluster(Greeter, size=NODES, **settings) as c,
        httpx.AsyncClient(timeout=30, limits=limits(tasks), trust_env=False) as http,
    ):
        urls = [node.url for node in c.nodes]
        await settled(http, urls)
        seeds = [str(node.address) for node in c.nodes]
        async with towtruck.connect(seeds, max_connections=tasks) as client:

            async def placed(actor_id: str) -> Any:
                return await client.invoke(actor_id, "hello")

            async def through_one(actor_id: str) -> Any:
                response = await http.post(f"{urls[0]}/invoke/{actor_id}/hello")
                response.raise_for_status()
                return response.json()

            async with trio.open_nursery() as nursery:  # activate every id
                ids = iter(range(1, RANDOM_IDS + 1))
                for _ in range(tasks):
                    nursery.start_soon(_each, placed, ids)
            loads = {"client": placed, "one node": through_one}
            for repetition in range(repeat):
                order = list(loads) if repetition % 2 == 0 else list(loads)[::-1]
                measured = {}
                for name in order:
                    before, cpu = await forwarded(http, urls), time.process_time()
                    started = trio.current_time()
                    calls = await load(loads[name], tasks, duration, repetition)
                    seconds = trio.current_time() - started
                    cpu = time.process_time() - cpu
                    hops = await forwarded(http, urls) - before
                    measured[name] = calls / seconds, 1e6 * cpu / max(calls, 1)
                    figures.add(f"{tag}, {name}", "calls/s", calls / seconds)
                    figures.add(f"{tag}, {name}, forwarded", "%", 100 * hops / max(calls, 1))
                    figures.add(f"{tag}, {name}, CPU per call", "µs", measured[name][1])
                rate, cpu_ratio = (
                    measured["client"][i] / measured["one node"][i] for i in range(2)
                )
                figures.add(f"{tag}, client / one node, calls/s", "x", rate)
                figures.add(f"{tag}, client / one node, CPU per call", "x", cpu_ratio)
            stats = client.statistics()
            figures.add(f"{tag}, client refused connections", "connections", stats.refused)
            figures.add(f"{tag}, client retries", "calls", stats.retries)
    return list(figures.values())


async def _each(call: Call, ids: Any) -> None:
    for actor_id in ids:
        await call(str(actor_id))


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    parser.add_argument("--tasks", type=int, help="concurrent calling tasks (32)")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    return {
        "duration": args.duration or (1.0 if args.quick else 5.0),
        "repeat": args.repeat or (1 if args.quick else 3),
        "tasks": args.tasks or 32,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    print(table(trio.run(partial(run, **options(parser.parse_args())))))


if __name__ == "__main__":
    main()
