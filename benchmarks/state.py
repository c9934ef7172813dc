"""In-process benchmark of durable state (issue 12), without HTTP.

Three comparisons, each side measured in the same run, with CPU time per operation
(the process's user and system time, all its threads: the store's included) beside
the rates:

- **Writes.** 100 caller tasks, each calling its own actor, whose method adds 1 to its
  state and ``await state.write()`` (SQLite, the default store), against the same 100
  tasks each writing through ``await trio.to_thread.run_sync(f)``, where ``f`` runs one
  upsert on a shared ``sqlite3`` connection (WAL, ``synchronous=NORMAL``, a
  ``threading.Lock``, autocommit: one statement, one commit per thread hop); and, for
  what the call itself costs, the same calls to actors without state.
- **Reads.** 100 callers, each call to a random one of 1,000 actors, ``balance()``
  answering the actor's persistent state without writing it, against the same call to
  1,000 actors without state (their dict in a plain attribute). Both kinds live in one
  runtime; after warm-up the store is not touched.
- **Activations.** First calls to new ids, each of which claims its actor in the store:
  memory, SQLite, Redis and PostgreSQL (servers of the benchmark's own, started as the
  tests start them), and the same actor without state as the reference. Redis and
  PostgreSQL are skipped, saying why, where their servers or libraries are missing;
  ``--quick`` leaves them out unless ``--state-stores`` names them.

The sides of the writes and of the reads alternate in each repetition, in halves of
``--duration``, as a b c c b a (reversed every other repetition), so a machine that
slows down or speeds up mid-run treats them alike; the activation kinds take turns,
the first one rotating. SQLite files are in a temporary directory on the machine's
disk.

Run it alone with ``python benchmarks/state.py [--quick] [--state-stores sqlite,redis]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import trio
from _common import Figure, Figures, common_arguments, cpu_seconds, descendants, table
from local_invoke import CALLERS, SPREAD, rate

import towtruck
from towtruck.storage import open_store

STORES = ("memory", "sqlite", "redis", "postgresql")
#: Stores that need a server (started by the benchmark, stopped at its end).
SERVERS = ("redis", "postgresql")
#: The repository, where ``tests.stores`` starts those servers.
ROOT = Path(__file__).resolve().parent.parent
#: Longest a measurement of a store may take beyond its duration before it is dropped.
GRACE_SECONDS = 30

Call = Callable[[int, int], Awaitable[object]]


def fresh_account() -> dict[str, Any]:
    return {"balance": 0}


class Account:
    """The README's account (``examples/account.py``), its deposit adding 1."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext) -> None:
        self.state = context.persistent(default=fresh_account)

    async def deposit(self, data: object) -> int:
        self.state.value["balance"] += 1
        await self.state.write()
        balance: int = self.state.value["balance"]
        return balance

    async def balance(self, data: object) -> dict[str, Any]:
        value: dict[str, Any] = self.state.value
        return value


class PlainAccount:
    """The same without persistent state: its dict is an attribute."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.value = fresh_account()

    async def deposit(self, data: object) -> int:
        self.value["balance"] += 1
        balance: int = self.value["balance"]
        return balance

    async def balance(self, data: object) -> dict[str, Any]:
        return self.value

    async def deposit_awaiting(self, data: object) -> int:
        """``deposit``, awaiting once as a write does: what a write cannot cost less than."""
        self.value["balance"] += 1
        await trio.lowlevel.checkpoint()
        balance: int = self.value["balance"]
        return balance


def create_account(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> Account:
    return Account(id, client, context)


def create_plain(id: str, client: towtruck.Client) -> PlainAccount:
    return PlainAccount(id, client)


def create_either(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> object:
    """Accounts with state for ids ``account-*``, without for the others."""
    if id.startswith("account-"):
        return Account(id, client, context)
    return PlainAccount(id, client)


@dataclasses.dataclass
class Sample:
    """Operations done over some seconds, and the CPU seconds they took."""

    ops: float = 0.0
    seconds: float = 0.0
    cpu: float = 0.0  # this process, every thread
    server_cpu: float = 0.0  # a store's server processes, if any

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.ops + other.ops,
            self.seconds + other.seconds,
            self.cpu + other.cpu,
            self.server_cpu + other.server_cpu,
        )

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def cpu_us(self) -> float:
        """CPU µs per operation in this process."""
        return 1e6 * self.cpu / self.ops

    @property
    def server_cpu_us(self) -> float:
        return 1e6 * self.server_cpu / self.ops


async def sample(call: Call, duration: float, server: list[int] | None = None) -> Sample:
    """``call`` from ``CALLERS`` tasks for ``duration`` seconds (see
    :func:`local_invoke.rate`), with the CPU time of this process and of the ``server``
    processes (and their children, started meanwhile or not)."""
    before = [*server, *descendants(server[0])] if server else []
    server_before, cpu_before = cpu_seconds(before), time.process_time()
    start = trio.current_time()
    calls = await rate(call, duration)
    seconds = trio.current_time() - start
    cpu = time.process_time() - cpu_before
    after = [*server, *descendants(server[0])] if server else []
    return Sample(calls * seconds, seconds, cpu, cpu_seconds(after) - server_before)


async def alternate(calls: list[Call], duration: float, flip: bool) -> list[Sample]:
    """Each of ``calls`` for ``duration`` seconds, in two halves, in order then in
    reverse (a b c c b a), or the other way round if ``flip``; the samples in the
    order of ``calls``."""
    order = list(range(len(calls)))[:: -1 if flip else 1]
    samples = [Sample() for _ in calls]
    for k in [*order, *reversed(order)]:
        samples[k] += await sample(calls[k], duration / 2)
    return samples


# Writes.

UPSERT = "INSERT INTO counters (id, n) VALUES (?, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1"


@contextlib.contextmanager
def thread_hop_writer(path: Path) -> Iterator[Call]:
    """The reference: caller ``i`` upserts its own row through a thread hop, one
    statement and one commit per call, on a connection all threads share."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS counters (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        lock = threading.Lock()
        ids = [f"counter-{i}" for i in range(CALLERS)]

        def write(counter: str) -> None:
            with lock:
                db.execute(UPSERT, (counter,))

        yield lambda i, n: trio.to_thread.run_sync(write, ids[i])
    finally:
        db.close()


async def writes(
    directory: Path, duration: float, flip: bool
) -> tuple[Sample, Sample, Sample, Sample, Sample]:
    """Caller ``i`` calling ``deposit`` on its own actor with persistent state in the
    SQLite store (a write per call); writing through the thread-hop reference; calling
    ``deposit`` on its own actor without state (what the call itself costs), and a
    ``deposit`` that awaits once, as a write does (what a writing call cannot cost less
    than: a turn that waits is a task switch and a cancel scope more); and the store's
    writes alone, caller ``i`` writing its own actor's state with no actor in between
    (what group commit does by itself)."""
    url = f"sqlite:///{directory}/bench.sqlite3"
    accounts = [f"account-w{i}" for i in range(CALLERS)]
    plain = [f"plain-w{i}" for i in range(CALLERS)]
    async with towtruck.open_runtime(create_either, state_store=url) as runtime:
        invoke = runtime.client.invoke
        for actor_id in accounts + plain:  # activate (claim) each, and write once
            await invoke(actor_id, "deposit")
        store = await open_store(f"sqlite:///{directory}/alone.sqlite3")
        claims = [await store.claim(f"alone-{i}") for i in range(CALLERS)]
        epochs = [claim.epoch for claim in claims]
        etags = [claim.states["state"].etag if claim.states else None for claim in claims]

        async def alone(i: int, n: int) -> None:
            etags[i] = await store.write(
                f"alone-{i}", "state", b"1", epoch=epochs[i], etag=etags[i]
            )

        try:
            with thread_hop_writer(directory / "thread-hop.sqlite3") as hop:
                for i in range(CALLERS):
                    await hop(i, 0)
                written, hopped, called, awaited, stored = await alternate(
                    [
                        lambda i, n: invoke(accounts[i], "deposit"),
                        hop,
                        lambda i, n: invoke(plain[i], "deposit"),
                        lambda i, n: invoke(plain[i], "deposit_awaiting"),
                        alone,
                    ],
                    duration,
                    flip,
                )
        finally:
            await store.aclose()
    return written, hopped, called, awaited, stored


# Reads.


async def reads(directory: Path, duration: float, flip: bool) -> tuple[Sample, Sample]:
    """Calls to ``balance`` on random actors of ``SPREAD`` with persistent state, and
    of ``SPREAD`` without, all in one runtime."""
    url = f"sqlite:///{directory}/bench.sqlite3"
    accounts = [f"account-{k}" for k in range(SPREAD)]
    plain = [f"plain-{k}" for k in range(SPREAD)]
    settings = {"state_store": url, "max_actors": 10 * SPREAD}  # none is collected
    async with towtruck.open_runtime(create_either, **settings) as runtime:
        invoke = runtime.client.invoke
        for actor_id in accounts + plain:
            await invoke(actor_id, "deposit")
        pick = random.Random(0).randrange

        def on(ids: list[str]) -> Call:
            return lambda i, n: invoke(ids[pick(SPREAD)], "balance")

        kept, without = await alternate([on(accounts), on(plain)], duration, flip)
    return kept, without


# Activations.


class Unavailable(Exception):
    """A store cannot be measured in this run (the message says why)."""


@contextlib.contextmanager
def store_server(kind: str) -> Iterator[tuple[str, list[int]]]:
    """A server for ``kind`` ("redis" or "postgresql") of the benchmark's own, started
    as the tests start theirs (``tests/stores.py``): its URL and process id.

    Raises:
        Unavailable: the server or the code that starts it is missing, or it failed.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(1, str(ROOT))  # after this directory, before site-packages
    try:
        import pytest

        from tests.stores import PostgresServer, RedisServer
    except ImportError as exc:
        raise Unavailable(f"tests/stores.py cannot be imported ({exc})") from None
    with tempfile.TemporaryDirectory(prefix=f"towtruck-bench-{kind}-") as directory:
        server = (RedisServer if kind == "redis" else PostgresServer)(Path(directory))
        try:
            server.start()
        except pytest.skip.Exception as exc:
            raise Unavailable(str(exc.msg)) from None
        except (OSError, RuntimeError) as exc:
            server.stop()
            raise Unavailable(f"{kind} did not start ({exc})") from None
        try:
            assert server.process is not None
            yield server.url, [server.process.pid]
        finally:
            server.stop()


async def activations(
    kind: str, url: str, duration: float, tag: str, server: list[int] | None
) -> Sample:
    """Activations/s of accounts kept in the store at ``url`` (``kind`` "none": without
    state): every call goes to an id never called before, tagged ``tag``. The store is
    opened, and its connections made, by a first call before the measurement."""
    factory: Callable[..., object] = create_plain if kind == "none" else create_account
    settings = {"state_store": url or "memory:", "max_actors": 10_000_000}
    async with towtruck.open_runtime(factory, **settings) as runtime:
        invoke = runtime.client.invoke
        await invoke(f"{tag}-warm-up", "balance")
        return await sample(lambda i, n: invoke(f"{tag}-{i}-{n}", "balance"), duration, server)


async def activation_rounds(
    figures: Figures,
    stores: list[str],
    urls: dict[str, str],
    duration: float,
    repetition: int,
    servers: dict[str, list[int]],
) -> None:
    """One repetition of the activation figures, each kind in turn (the first rotating)."""
    kinds = ["none", *stores]
    turn = repetition % len(kinds)
    measured: dict[str, Sample] = {}
    for kind in kinds[turn:] + kinds[:turn]:
        if kind not in urls and kind != "none":
            continue
        url = urls.get(kind, "")
        try:
            with trio.fail_after(duration + GRACE_SECONDS):
                measured[kind] = await activations(
                    kind, url, duration, f"{kind}-{repetition}", servers.get(kind)
                )
        except Exception as exc:
            if kind in ("none", "memory", "sqlite"):
                raise
            print(f"state: {kind} left out: it failed ({exc!r})", file=sys.stderr)
            del urls[kind]
    reference = measured["none"]
    figures.add(f"activations, no state, {CALLERS} callers", "actors/s", reference.rate)
    figures.add("activations, no state, CPU per activation", "µs", reference.cpu_us)
    for kind in stores:
        if kind not in measured:
            continue
        found = measured[kind]
        name = f"activations, {kind} store, {CALLERS} callers"
        figures.add(name, "actors/s", found.rate)
        figures.add(f"activations, {kind} store / no state", "x", found.rate / reference.rate)
        figures.add(f"activations, {kind} store, CPU per activation", "µs", found.cpu_us)
        if kind in servers:
            figures.add(
                f"activations, {kind} store, server CPU per activation", "µs", found.server_cpu_us
            )


async def run(*, duration: float, repeat: int, stores: list[str]) -> list[Figure]:
    """All of the above, the writes, reads and activations of a repetition one after
    the other."""
    figures = Figures()
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="towtruck-bench-")))
        urls = {"memory": "memory:", "sqlite": f"sqlite:///{directory}/bench.sqlite3"}
        servers: dict[str, list[int]] = {}
        for kind in SERVERS:
            if kind in stores:
                try:
                    urls[kind], servers[kind] = stack.enter_context(store_server(kind))
                except Unavailable as exc:
                    print(f"state: {kind} left out: {exc}", file=sys.stderr)
        for repetition in range(repeat):
            flip = repetition % 2 == 1
            written, hopped, called, awaited, stored = await writes(directory, duration, flip)
            name = f"{CALLERS} callers, each to its own actor"
            figures.add(f"persistent writes, sqlite store, {name}", "writes/s", written.rate)
            figures.add(f"thread-hop writes, {CALLERS} tasks", "writes/s", hopped.rate)
            figures.add(f"the same calls without state, {name}", "calls/s", called.rate)
            figures.add(f"the same, awaiting once, without state, {name}", "calls/s", awaited.rate)
            figures.add("persistent writes / thread-hop writes", "x", written.rate / hopped.rate)
            figures.add("persistent writes / calls without state", "x", written.rate / called.rate)
            figures.add(
                "persistent writes / calls awaiting once without state",
                "x",
                written.rate / awaited.rate,
            )
            figures.add("persistent writes, CPU per write", "µs", written.cpu_us)
            figures.add(
                f"store writes alone, sqlite store, {CALLERS} tasks", "writes/s", stored.rate
            )
            figures.add("store writes alone / thread-hop writes", "x", stored.rate / hopped.rate)
            figures.add("store writes alone, CPU per write", "µs", stored.cpu_us)
            figures.add("thread-hop writes, CPU per write", "µs", hopped.cpu_us)
            figures.add("the same calls without state, CPU per call", "µs", called.cpu_us)
            figures.add("the same, awaiting once, CPU per call", "µs", awaited.cpu_us)
            kept, without = await reads(directory, duration, flip)
            name = f"{SPREAD:,} actors, {CALLERS} callers"
            figures.add(f"read-only call, persistent state, {name}", "calls/s", kept.rate)
            figures.add(f"call, no state, {name}", "calls/s", without.rate)
            figures.add(
                "read-only call / call without state, time per call", "x", without.rate / kept.rate
            )
            figures.add("read-only call, persistent state, CPU per call", "µs", kept.cpu_us)
            figures.add("call, no state, CPU per call", "µs", without.cpu_us)
            await activation_rounds(figures, stores, urls, duration, repetition, servers)
    return list(figures.values())


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    parser.add_argument(
        "--state-stores",
        help=f"stores whose activations are measured, of {','.join(STORES)}"
        " (all; --quick: memory,sqlite)",
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    if args.state_stores:
        stores = args.state_stores.split(",")
        if unknown := set(stores) - set(STORES):
            raise SystemExit(f"--state-stores: no store {', '.join(sorted(unknown))}")
    else:
        stores = ["memory", "sqlite"] if args.quick else list(STORES)
    return {
        "duration": args.duration or (0.5 if args.quick else 2.0),
        "repeat": args.repeat or (1 if args.quick else 5),
        "stores": stores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    args = parser.parse_args()
    print(table(trio.run(partial(run, **options(args)))))


if __name__ == "__main__":
    main()
