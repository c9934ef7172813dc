"""In-process benchmark of timers and durable reminders (issue 13), without HTTP.

Three measurements, each in runtimes of its own (``towtruck.open_runtime``):

- **Reminder ticks.** ``--reminders`` actors (20,000) each register one reminder,
  ``await context.remind("r", after=...)``, all due at the same moment a few seconds
  ahead, so that registering is over before the first falls due. From the first tick
  to the last, ticks delivered per second; each tick's lateness (the reminder service's
  clock when ``receive_reminder`` runs, less ``scheduled_at``): the first tick's, p50
  and p99; and the process's CPU time per tick (every thread: SQLite's included), from
  just before the due moment to the last tick. The actors stay in memory. Three cases:
  the memory store and the SQLite store (a file in a temporary directory), where the
  node that registers the reminders delivers them, its ``remind`` having put each in
  its schedule; and SQLite after a restart: the reminders are registered in one
  runtime, which stops, and delivered by a second on the same file, which knows them
  only from its loads of the due rows (each ``reminder_refresh``, the ``_LOAD``,
  10,000, soonest not yet marked done) and activates each actor for its tick.
- **Memory per idle actor with a timer.** RSS growth per actor from activating
  ``--idle-actors`` actors (100,000) that each register
  ``context.timer("t", self.tick, every=3600)`` in ``__init__``, and as many of the
  same class without the timer, each kind in a fresh Python process of its own (this
  module, run with ``--idle-probe``; the two side by side), measured as
  ``local_invoke.py`` measures idle actors: ``gc.collect()``, RSS, the calls,
  ``gc.collect()``, RSS. As a check on RSS, each process then activates a tenth as
  many again under ``tracemalloc``: the bytes Python allocated per actor.
- **Timer ticks.** ``--timer-actors`` actors (10,000) each with a timer every 0.1 s
  whose callback counts its ticks: over ``--duration`` seconds, ticks the scheduler
  fired (``runtime.catalog.timers.fired``), ticks that ran, and CPU time per tick that
  ran. A tick due while the previous one has not run is skipped (``fired`` counts it
  all the same), so ticks run may be fewer than the ticks asked for.

Run it alone with ``python benchmarks/timers.py [--quick] [--reminders N]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Final

import trio
from _common import Figure, Figures, common_arguments, rss_bytes, table
from local_invoke import call_each

import towtruck

#: Seconds between a benchmark timer's ticks.
TICK_PERIOD: Final = 0.1
#: The period of the idle actors' timer: it never ticks while they are measured.
HOUR: Final = 3600.0
#: Registrations per second the lead before the due moment allows for (one node
#: registers about 8,000/s on a 2-core machine, memory store or SQLite).
REGISTER_RATE: Final = 5_000
#: Longest the ticks may take to arrive, past their due moment, before the run fails.
GRACE_SECONDS: Final = 60
#: This module, run in a process of its own to measure idle actors.
HERE: Final = str(Path(__file__).resolve())
#: The reminder cases (see the module's docstring), as the figures name them.
CASES: Final = ("memory store", "sqlite store", "sqlite store, after a restart")


class Deliveries:
    """What the reminder actors saw, for the benchmark to read: when each tick came
    and how late, on the reminder service's clock."""

    def __init__(self) -> None:
        self.expect(0, time.time)

    def expect(self, count: int, clock: Callable[[], float]) -> None:
        """Start afresh: ``count`` ticks are to come, timed by ``clock``."""
        self.count = count
        self.clock = clock
        self.at: list[float] = []
        self.lateness: list[float] = []
        #: Set when the ``count``-th tick has come.
        self.all_in = trio.Event()

    def record(self, reminder: towtruck.Reminder) -> None:
        now = self.clock()
        self.at.append(now)
        self.lateness.append(now - reminder.scheduled_at)
        if len(self.at) >= self.count:
            self.all_in.set()


#: The ticks of the current measurement (module-level: the actors' only way out).
DELIVERIES = Deliveries()


class Sleeper:
    """An actor that sets one reminder and records its tick."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext) -> None:
        self.context = context

    async def arm(self, delay: float) -> None:
        await self.context.remind("r", after=delay)

    async def receive_reminder(self, reminder: towtruck.Reminder) -> None:
        DELIVERIES.record(reminder)


class Idle:
    """An actor that does nothing; its ``tick`` counts the ticks of all of them."""

    ticks: ClassVar[int] = 0

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext) -> None:
        self.context = context

    def ping(self) -> None:
        return None

    def tick(self) -> None:
        Idle.ticks += 1


class IdleWithTimer(Idle):
    """The same with a timer that does not tick while it is measured."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext) -> None:
        super().__init__(id, client, context)
        context.timer("t", self.tick, every=HOUR)


class Ticker(Idle):
    """The same with a timer every ``TICK_PERIOD``."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext) -> None:
        super().__init__(id, client, context)
        context.timer("t", self.tick, every=TICK_PERIOD)


def create_sleeper(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> Sleeper:
    return Sleeper(id, client, context)


def create_idle(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> Idle:
    return Idle(id, client, context)


def create_idle_with_timer(
    id: str, client: towtruck.Client, context: towtruck.ActorContext
) -> Idle:
    return IdleWithTimer(id, client, context)


def create_ticker(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> Idle:
    return Ticker(id, client, context)


# Reminder ticks.


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values``, the nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def register(runtime: towtruck.Runtime, count: int, tag: str) -> float:
    """Have ``count`` actors each set a reminder, all due at one moment, far enough
    ahead for the registering to be over by then; return that moment (the reminder
    service's clock)."""
    clock = runtime.reminders.clock
    invoke = runtime.client.invoke
    await invoke(f"{tag}-warm-up", "arm", 3 * HOUR)  # opens the store
    due = clock() + 0.3 + count / REGISTER_RATE
    await call_each(lambda k: invoke(f"{tag}-{k}", "arm", due - clock()), count)
    if clock() > due:
        print(
            f"timers: registering {count:,} reminders took past their due moment;"
            " the first ticks overlap it",
            file=sys.stderr,
        )
    return due


async def deliveries(runtime: towtruck.Runtime, count: int, due: float) -> dict[str, float]:
    """Wait for the ``count`` ticks due at ``due``. Ticks/s from the first to the last;
    the first tick's lateness, and p50 and p99 (ms); the process's CPU µs per tick,
    from just before that moment to the last tick (the marks of the last few in the
    store left out); ticks over a second late."""
    clock = runtime.reminders.clock
    DELIVERIES.expect(count, clock)
    await trio.sleep(max(0.0, due - clock() - 0.05))
    cpu = time.process_time()
    with trio.fail_after(due - clock() + GRACE_SECONDS):
        await DELIVERIES.all_in.wait()
    cpu = time.process_time() - cpu
    lateness = DELIVERIES.lateness
    return {
        "rate": (count - 1) / (max(DELIVERIES.at) - min(DELIVERIES.at)),
        "first": 1000 * min(lateness),
        "p50": 1000 * percentile(lateness, 0.5),
        "p99": 1000 * percentile(lateness, 0.99),
        "cpu": 1e6 * cpu / count,
        "late": sum(1 for seconds in lateness if seconds > 1.0),
    }


async def reminder_ticks(case: str, directory: Path, count: int, tag: str) -> dict[str, float]:
    """:func:`deliveries` of ``count`` reminders due at once, in ``case`` (of ``CASES``)."""
    url = "memory:" if case == "memory store" else f"sqlite:///{directory}/{tag}.sqlite3"
    settings: dict[str, Any] = {"state_store": url, "max_actors": 2 * count}
    async with towtruck.open_runtime(create_sleeper, **settings) as runtime:
        due = await register(runtime, count, tag)
        if case != "sqlite store, after a restart":
            return await deliveries(runtime, count, due)
    # A second node on the file: it knows the reminders only from its loads.
    async with towtruck.open_runtime(create_sleeper, **settings) as runtime:
        return await deliveries(runtime, count, due)


# Memory per idle actor.


async def idle_actor_bytes(with_timer: bool, count: int) -> tuple[float, float]:
    """Resident bytes per idle actor (RSS growth from activating ``count`` of them),
    with a timer each or without; then, as a check on RSS, the bytes Python allocates
    per actor for ``count // 10`` more, traced by ``tracemalloc``. Run in a fresh
    process: memory freed by an earlier measurement would be reused and hide growth."""
    factory = create_idle_with_timer if with_timer else create_idle
    async with towtruck.open_runtime(factory, max_actors=2 * count) as runtime:
        invoke = runtime.client.invoke
        await invoke("warm-up", "ping")  # first-call costs: method tables, imports
        gc.collect()
        before = rss_bytes()
        await call_each(lambda k: invoke(str(k), "ping"), count)
        gc.collect()
        after = rss_bytes()
        traced = count // 10
        tracemalloc.start()
        allocated = tracemalloc.get_traced_memory()[0]
        await call_each(lambda k: invoke(f"traced-{k}", "ping"), traced)
        gc.collect()
        allocated = tracemalloc.get_traced_memory()[0] - allocated
        tracemalloc.stop()
        actors = count + traced + 1
        stats = runtime.catalog.statistics()
        timers = len(runtime.catalog.timers)
        if stats.actors != actors or stats.busy or timers != (actors if with_timer else 0):
            raise RuntimeError(f"expected {actors} idle actors, not {stats} ({timers} timers)")
    return (after - before) / count, allocated / traced


async def idle_actor_bytes_apart(
    with_timer: bool, count: int, sizes: dict[bool, tuple[float, float]]
) -> None:
    """:func:`idle_actor_bytes` in a new Python process (this module, ``--idle-probe``),
    into ``sizes[with_timer]``."""
    kind = "timer" if with_timer else "plain"
    command = [sys.executable, HERE, "--idle-probe", kind, "--idle-actors", str(count)]
    done = await trio.run_process(command, capture_stdout=True)
    resident, traced = json.loads(done.stdout)
    sizes[with_timer] = resident, traced


# Timer ticks.


async def timer_ticks(count: int, duration: float) -> tuple[float, float, float]:
    """Over ``duration`` seconds, with ``count`` actors ticking every ``TICK_PERIOD``:
    ticks fired per second, ticks run per second, and CPU µs per tick run."""
    async with towtruck.open_runtime(create_ticker, max_actors=2 * count) as runtime:
        invoke = runtime.client.invoke
        await call_each(lambda k: invoke(f"ticker-{k}", "ping"), count)
        await trio.sleep(2 * TICK_PERIOD)  # every timer has ticked
        scheduler = runtime.catalog.timers
        fired, ran, cpu = scheduler.fired, Idle.ticks, time.process_time()
        start = trio.current_time()
        await trio.sleep(duration)
        seconds = trio.current_time() - start
        fired, ran = scheduler.fired - fired, Idle.ticks - ran
        cpu = time.process_time() - cpu
    return fired / seconds, ran / seconds, 1e6 * cpu / ran


async def run(
    *, duration: float, repeat: int, reminders: int, idle_actors: int, timer_actors: int
) -> list[Figure]:
    """All of the above, each repetition in turn; the reminder cases rotate."""
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="towtruck-bench-") as name:
        directory = Path(name)
        for repetition in range(repeat):
            turn = repetition % len(CASES)
            measured: dict[str, dict[str, float]] = {}
            for n, case in enumerate(CASES[turn:] + CASES[:turn]):
                tag = f"r{repetition}-{n}"
                measured[case] = await reminder_ticks(case, directory, reminders, tag)
            for case in CASES:
                found = measured[case]
                name = f"reminder ticks, {case}, {reminders:,} due at once"
                figures.add(name, "ticks/s", found["rate"])
                figures.add(f"reminder ticks, {case}, first tick late", "ms", found["first"])
                figures.add(f"reminder ticks, {case}, lateness p50", "ms", found["p50"])
                figures.add(f"reminder ticks, {case}, lateness p99", "ms", found["p99"])
                figures.add(f"reminder ticks, {case}, CPU per tick", "µs", found["cpu"])
                figures.add(f"reminder ticks, {case}, over a second late", "ticks", found["late"])
            memory = measured["memory store"]["rate"]
            for case in CASES[1:]:
                figures.add(
                    f"reminder ticks, {case} / memory store", "x", measured[case]["rate"] / memory
                )
            sizes: dict[bool, tuple[float, float]] = {}
            async with trio.open_nursery() as nursery:  # two processes: side by side
                for kind in (False, True):
                    nursery.start_soon(idle_actor_bytes_apart, kind, idle_actors, sizes)
            (timer, timer_traced), (plain, plain_traced) = sizes[True], sizes[False]
            name = f"memory ({idle_actors:,} actors)"
            figures.add(f"idle actor with a timer, {name}", "bytes/actor", timer)
            figures.add(f"idle actor without a timer, {name}", "bytes/actor", plain)
            figures.add("idle actor memory, with a timer - without", "bytes/actor", timer - plain)
            name = f"traced allocations ({idle_actors // 10:,} more actors)"
            figures.add(f"idle actor with a timer, {name}", "bytes/actor", timer_traced)
            figures.add(f"idle actor without a timer, {name}", "bytes/actor", plain_traced)
            figures.add(
                "idle actor, traced allocations, with a timer - without",
                "bytes/actor",
                timer_traced - plain_traced,
            )
            fired, ran, cpu = await timer_ticks(timer_actors, duration)
            name = f"timers, {timer_actors:,} actors every {TICK_PERIOD} s"
            figures.add(f"{name}: ticks asked", "ticks/s", timer_actors / TICK_PERIOD)
            figures.add(f"{name}: ticks fired", "ticks/s", fired)
            figures.add(f"{name}: ticks run", "ticks/s", ran)
            figures.add(f"{name}: CPU per tick run", "µs", cpu)
    return list(figures.values())


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    parser.add_argument(
        "--reminders", type=int, help="reminders due at once, per case (20,000; --quick 2,000)"
    )
    parser.add_argument(
        "--idle-actors",
        type=int,
        help="idle actors, with a timer and without, for the memory figures (100,000;"
        " --quick 10,000)",
    )
    parser.add_argument(
        "--timer-actors",
        type=int,
        help=f"actors with a timer every {TICK_PERIOD} s (10,000; --quick 2,000)",
    )


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    return {
        "duration": args.duration or (0.5 if args.quick else 2.0),
        "repeat": args.repeat or (1 if args.quick else 3),
        "reminders": args.reminders or (2_000 if args.quick else 20_000),
        "idle_actors": args.idle_actors or (10_000 if args.quick else 100_000),
        "timer_actors": args.timer_actors or (2_000 if args.quick else 10_000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    parser.add_argument("--idle-probe", choices=("plain", "timer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.idle_probe:  # a child of idle_actor_bytes_apart: one figure, as JSON
        count = options(args)["idle_actors"]
        print(json.dumps(trio.run(idle_actor_bytes, args.idle_probe == "timer", count)))
        return
    print(table(trio.run(partial(run, **options(args)))))


if __name__ == "__main__":
    main()
