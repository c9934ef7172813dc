"""In-process benchmark of local invokes through the actor mailbox, without HTTP.

With 100 caller tasks it measures invokes/s on one hot actor and spread over 1,000
actors; activations/s (every call to a new id); and, as a reference, the same round
trip over plain trio memory channels: a server task that takes requests from one
channel and answers each over the reply channel it carried. The 1,000 actors are
measured twice: towtruck runs an ``async def`` with no ``await`` in it (the greeter's
``hello``) to its end in one step, without a cancel scope, so the second run has a
``hello`` that awaits ``trio.lowlevel.checkpoint()``, as a method doing I/O would.
The ratios towtruck / channels (calls and activations) are the cost of the runtime
on top of trio's own primitives. It also measures resident memory per idle actor: RSS before and after
activating ``--actors`` actors, and the pause of a full garbage collection with those
actors in memory.

Run it alone with ``python benchmarks/local_invoke.py [--quick] [--actors N]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from _common import Figure, Figures, common_arguments, rss_bytes, table

import towtruck

CALLERS = 100
SPREAD = 1_000

Factory = Callable[[str, towtruck.Client], object]


class Greeter:
    """The README's actor (``examples/greeter.py``)."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id, self.client = id, client

    async def hello(self, data: object) -> dict[str, str]:
        return {"hello": f"from actor {self.id}"}


class WaitingGreeter(Greeter):
    """The same, with a ``hello`` that suspends once, as one doing I/O would."""

    async def hello(self, data: object) -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return {"hello": f"from actor {self.id}"}


def create_actor(id: str, client: towtruck.Client) -> Greeter:
    return Greeter(id, client)


def create_waiting_actor(id: str, client: towtruck.Client) -> Greeter:
    return WaitingGreeter(id, client)


@asynccontextmanager
async def open_runtime(
    max_actors: int, factory: Factory = create_actor
) -> AsyncIterator[towtruck.Runtime]:
    """A node's runtime without HTTP, stopped gracefully on leaving the block."""
    runtime = towtruck.Runtime(factory, towtruck.Settings.load(max_actors=max_actors))
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.serve)
        try:
            yield runtime
        finally:
            await runtime.stop()


async def rate(call: Callable[[int, int], Awaitable[object]], duration: float) -> float:
    """Run ``CALLERS`` tasks doing ``await call(caller, n)`` for ``duration`` seconds
    (n counts each caller's calls); return calls per second over all of them."""
    done = 0

    async def caller(i: int) -> None:
        nonlocal done
        n = 0
        while trio.current_time() < end:
            await call(i, n)
            n += 1
        done += n

    start = trio.current_time()
    end = start + duration
    async with trio.open_nursery() as nursery:
        for i in range(CALLERS):
            nursery.start_soon(caller, i)
    return done / (trio.current_time() - start)


async def channel_round_trips(duration: float) -> float:
    """Calls/s of the reference: request over a channel to one server task, reply over
    another, with the same callers; the server builds the same answer, no JSON."""
    requests_send, requests_receive = trio.open_memory_channel[
        tuple[str, trio.MemorySendChannel[dict[str, str]]]
    ](CALLERS)
    replies = [trio.open_memory_channel[dict[str, str]](1) for _ in range(CALLERS)]

    async def server() -> None:
        async for actor_id, reply in requests_receive:
            await reply.send({"hello": f"from actor {actor_id}"})

    async def call(i: int, n: int) -> object:
        await requests_send.send(("1", replies[i][0]))
        return await replies[i][1].receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        result = await rate(call, duration)
        nursery.cancel_scope.cancel()
    return result


async def invokes(duration: float, spread: int, factory: Factory = create_actor) -> float:
    """Calls/s to ``hello`` on ``spread`` actors made by ``factory``, activated beforehand."""
    ids = [str(i) for i in range(spread)]
    pick = random.Random(0).randrange
    async with open_runtime(10 * spread, factory) as runtime:
        invoke = runtime.client.invoke
        for actor_id in ids:
            await invoke(actor_id, "hello")
        if spread == 1:
            return await rate(lambda i, n: invoke("1", "hello"), duration)
        return await rate(lambda i, n: invoke(ids[pick(spread)], "hello"), duration)


async def activations(duration: float) -> float:
    """Activations/s: every call goes to an id never called before."""
    async with open_runtime(max_actors=10_000_000) as runtime:
        invoke = runtime.client.invoke
        return await rate(lambda i, n: invoke(f"{i}-{n}", "hello"), duration)


async def idle_actors(count: int) -> tuple[float, float, float]:
    """Resident bytes per idle actor (RSS growth from activating ``count`` actors), and
    how long a full pass of Python's cyclic garbage collector takes, in ms, before and
    after: a pause every call sees now and then, as the collector runs by itself."""
    async with open_runtime(max_actors=count + 1) as runtime:
        invoke = runtime.client.invoke
        await invoke("warm-up", "hello")  # first-call costs: method tables, imports
        gc.collect()
        pause_before = full_collection_ms()
        before = rss_bytes()
        await call_each(lambda k: invoke(str(k), "hello"), count)
        gc.collect()
        after = rss_bytes()
        pause_after = full_collection_ms()
        stats = runtime.catalog.statistics()
        if stats.actors != count + 1 or stats.busy:
            raise RuntimeError(f"expected {count + 1} idle actors, not {stats}")
    return (after - before) / count, pause_before, pause_after


def full_collection_ms() -> float:
    """Milliseconds ``gc.collect()`` takes now."""
    start = time.perf_counter()
    gc.collect()
    return 1000 * (time.perf_counter() - start)


async def call_each(call: Callable[[int], Awaitable[object]], count: int) -> None:
    """Make ``count`` calls, ``call(0)`` to ``call(count - 1)``, from ``CALLERS`` tasks."""

    async def caller(i: int) -> None:
        for k in range(i, count, CALLERS):
            await call(k)

    async with trio.open_nursery() as nursery:
        for i in range(CALLERS):
            nursery.start_soon(caller, i)


async def memory_at_the_cap(stream: int, cap: int) -> tuple[int, int, int]:
    """Resident memory while ``stream`` distinct ids are called, with ``max_actors`` at
    ``cap``: once the cap is reached, each new actor displaces the least recently used,
    so memory should stay flat. Returns RSS (bytes) at the cap, at the end, and the
    actor count at the end."""
    async with open_runtime(max_actors=cap) as runtime:
        invoke = runtime.client.invoke
        await call_each(lambda k: invoke(f"cap{k}", "hello"), 2 * cap)
        gc.collect()
        at_cap = rss_bytes()
        await call_each(lambda k: invoke(f"flood{k}", "hello"), stream - 2 * cap)
        gc.collect()
        return at_cap, rss_bytes(), len(runtime.catalog)


async def run(*, duration: float, repeat: int, actors: int) -> list[Figure]:
    """All of the above; throughput and its reference alternate within each repetition,
    so their ratio is taken over the same stretch of a noisy machine."""
    figures = Figures()
    # First, while the process has not yet freed memory it could reuse.
    per_actor, pause_before, pause_after = await idle_actors(actors)
    figures.add(f"idle actor memory ({actors:,} actors)", "bytes/actor", per_actor)
    figures.add("full gc.collect(), no actors", "ms", pause_before)
    figures.add(f"full gc.collect(), {actors:,} idle actors", "ms", pause_after)
    stream, cap = 5 * actors, actors // 10
    at_cap, at_end, count = await memory_at_the_cap(stream, cap)
    figures.add(f"{stream:,} new ids, max_actors {cap:,}: RSS at the cap", "MB", at_cap / 2**20)
    figures.add(f"{stream:,} new ids, max_actors {cap:,}: RSS at the end", "MB", at_end / 2**20)
    figures.add(f"{stream:,} new ids, max_actors {cap:,}: actors at the end", "actors", count)
    figures.add(
        f"{stream:,} new ids, max_actors {cap:,}: RSS at the end / at the cap", "x", at_end / at_cap
    )
    for _ in range(repeat):
        reference = await channel_round_trips(duration)
        hot = await invokes(duration, 1)
        spread = await invokes(duration, SPREAD)
        waiting = await invokes(duration, SPREAD, create_waiting_actor)
        figures.add(f"local invoke, 1 actor, {CALLERS} callers", "calls/s", hot)
        figures.add(f"local invoke, {SPREAD:,} actors, {CALLERS} callers", "calls/s", spread)
        figures.add(
            f"local invoke, {SPREAD:,} actors, {CALLERS} callers, hello awaits a checkpoint",
            "calls/s",
            waiting,
        )
        figures.add(f"trio channel round trip, {CALLERS} callers", "calls/s", reference)
        figures.add("local invoke 1 actor / channel round trip", "x", hot / reference)
        figures.add(f"local invoke {SPREAD:,} actors / channel round trip", "x", spread / reference)
        activated = await activations(duration)
        figures.add(f"activations, {CALLERS} callers", "actors/s", activated)
        figures.add("activations / channel round trip", "x", activated / reference)
    return list(figures.values())


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    parser.add_argument("--actors", type=int, help="idle actors for the memory figure (200,000)")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    return {
        "duration": args.duration or (0.5 if args.quick else 2.0),
        "repeat": args.repeat or (1 if args.quick else 5),
        "actors": args.actors or (20_000 if args.quick else 200_000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    args = parser.parse_args()
    print(table(trio.run(partial(run, **options(args)))))


if __name__ == "__main__":
    main()
