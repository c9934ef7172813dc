"""The performance issue's targets, checked against measured figures, and the Markdown
report ``run.py --results PATH`` writes: command, date, machine, targets, a short
"how fast" table of ratios (for the README), and every figure.

A target compares the median of a figure over the repetitions with a bound. Figures
are found by name, with ``*`` for any word (the load generator, ``wrk`` or
``python``; a count); a target whose figures were not measured (``--only``) says so.
Every bound of issue 10 is a ratio of figures measured in the same run; the absolute
figures shown beside them are for reading, not for comparing across machines. Issue 12
(durable state) adds one absolute bound, SQLite writes/s, beside a ratio to the
thread-hop reference measured in the same rounds; issue 13 (timers and reminders)
another, the memory of an idle actor with a timer, beside the same actor's without;
issue 16 (scale) bounds ratios of simulated figures between cluster sizes.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import operator
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

from _common import Figure, markdown_table, num

from towtruck.server import parser


@dataclass(frozen=True)
class Bound:
    """One condition of a target: the median of figure ``name`` ``op`` ``limit``."""

    name: str
    op: str  # ">=", "<=" or "=="
    limit: float

    def check(self, figures: dict[str, Figure]) -> tuple[str, bool] | None:
        """What was measured, as text, and whether it is within the bound; None if
        the figure was not measured."""
        figure = _find(figures, self.name)
        if figure is None:
            return None
        compare: Callable[[float, float], bool] = _OPS[self.op]
        return _text(figure), compare(figure.median, self.limit)


@dataclass(frozen=True)
class Target:
    """One target: its text, the bounds that must all hold, and figures shown beside
    them (not bounded: what the ratios were taken of)."""

    text: str
    bounds: tuple[Bound, ...]
    beside: tuple[str, ...] = ()


def _find(figures: dict[str, Figure], name: str) -> Figure | None:
    """The measured figure called ``name``, where ``*`` stands for any word."""
    pattern = re.escape(name).replace(r"\*", r"\S+")
    found = (f for key, f in figures.items() if re.fullmatch(pattern, key) and f.values)
    return next(found, None)


def _text(figure: Figure) -> str:
    return f"{num(figure.median)} {figure.unit} ({figure.name})"


_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}

HTTP = "http * -c50"
HOT = "hot actor /invoke/1/hello"
RANDOM = "random actor of 10,000"
YARDSTICK_HOT = "yardstick: raw trio, /invoke/1/hello"
YARDSTICK_RANDOM = "yardstick: raw trio, random id of 10,000"
HYPERCORN = "reference: raw ASGI, hypercorn trio"
WORKERS = "workers * -c50"
SPREAD = "cluster * 3x-c16 random of 10,000"
COLD = "cluster * 3x-c16 new ids"
SPREAD_CHECK = "single activation, random and forwarded ids"
#: Ratios' names, after a case's.
P99_RATIO = ", p99 / yardstick's"
CPU_RATIO = ", CPU per request / yardstick's"
ALONE_CPU_RATIO = ", CPU per request / one node alone's"
ALONE_RPS_RATIO = ", total / one node alone's"
COLD_CHECK = "single activation, new ids"
WRITES = "persistent writes, sqlite store, * callers, each to its own actor"
READ = "read-only call, persistent state, * actors, * callers"
PLAIN_CALL = "call, no state, * actors, * callers"
#: ``timers.py``'s reminder cases, as the figures name them, and as the tables do.
REMINDER_CASES = {
    "memory store": "memory store",
    "sqlite store": "SQLite",
    "sqlite store, after a restart": "SQLite after a restart",
}
IDLE_TIMER = "idle actor with a timer, memory (* actors)"
TICKS = "timers, * actors every * s"
#: ``observability.py``'s loads, as its figures name them, before ``, metrics on`` etc.
OBSERVED_LOADS = (
    "local invoke, 1 actor, * callers",
    "local invoke, 1,000 actors, * callers",
    f"observability {HTTP} {HOT}",
    f"observability {HTTP} {RANDOM}",
)
#: Reminder triggers per second Dapr publishes for its Scheduler service: a reference
#: for the notes, measured elsewhere, not a bound.
DAPR_SCHEDULER = 15_000
#: The stores whose activations ``state.py`` measures, as the figures name them.
STATE_STORES = {
    "memory": "memory",
    "sqlite": "SQLite",
    "redis": "Redis",
    "postgresql": "PostgreSQL",
}

#: ``remote.py``'s loads (issue 15), as its figures name them.
REMOTE = "remote client, 3 nodes, * tasks, random of 10,000"

#: Issue 10's targets. The bounds of 4 ("no regression") are the figures of the last
#: run before issue 10 (RESULTS.md of 2026-11-24) with a 10% margin, as ratios to the
#: in-process reference where the benchmark has one.
TARGETS: list[Target] = [
    Target(
        "1. /invoke on one process >= 0.75x the raw-trio yardstick's requests/s"
        " (wrk -t1 -c50, same rounds), hot actor and 10,000 random ids",
        (
            Bound(f"{HTTP} {HOT} / yardstick", ">=", 0.75),
            Bound(f"{HTTP} {RANDOM} / yardstick", ">=", 0.75),
        ),
        (
            f"{HTTP} {HOT}",
            f"{HTTP} {YARDSTICK_HOT}",
            f"{HTTP} {RANDOM}",
            f"{HTTP} {YARDSTICK_RANDOM}",
        ),
    ),
    Target(
        "1. /invoke p99 <= 1.5x the yardstick's, hot actor and 10,000 random ids",
        (
            Bound(f"{HTTP} {HOT}{P99_RATIO}", "<=", 1.5),
            Bound(f"{HTTP} {RANDOM}{P99_RATIO}", "<=", 1.5),
        ),
        (
            f"{HTTP} {HOT}, p99",
            f"{HTTP} {YARDSTICK_HOT}, p99",
            f"{HTTP} {RANDOM}, p99",
            f"{HTTP} {YARDSTICK_RANDOM}, p99",
        ),
    ),
    Target(
        "1. (reported, no bound) server CPU per request, towtruck and the yardstick",
        (),
        (
            f"{HTTP} {HOT}, server CPU per request",
            f"{HTTP} {YARDSTICK_HOT}, server CPU per request",
            f"{HTTP} {HOT}{CPU_RATIO}",
            f"{HTTP} {RANDOM}, server CPU per request",
            f"{HTTP} {YARDSTICK_RANDOM}, server CPU per request",
            f"{HTTP} {RANDOM}{CPU_RATIO}",
        ),
    ),
    *(
        Target(
            f"2. --workers 2: server CPU per request <= 1.3x --workers 1's, same run, {case}",
            (Bound(f"{WORKERS} {case}, 2 workers / 1 worker CPU per request", "<=", 1.3),),
            (
                f"{WORKERS} {case}, 1 worker, server CPU per request",
                f"{WORKERS} {case}, 2 workers, server CPU per request",
                f"{WORKERS} {case}, 2 workers, forwarded",
                f"{WORKERS} {case}, 1 worker",
                f"{WORKERS} {case}, 2 workers",
                f"{WORKERS} {case}, 2 workers / 1 worker requests/s",
            ),
        )
        for case in ("hot actor", RANDOM)
    ),
    Target(
        "3. 3-node cluster, random ids on all nodes: server CPU per request summed over the"
        " nodes <= 2x one node alone's under the same load, same run; 0 errors;"
        " 0 ids on two nodes",
        (
            Bound(f"{SPREAD}{ALONE_CPU_RATIO}", "<=", 2),
            Bound(f"{SPREAD}, failed", "==", 0),
            Bound(f"{SPREAD_CHECK}: ids on 2+ nodes, of *", "==", 0),
            Bound(f"{SPREAD_CHECK}: answered ids nowhere, of *", "==", 0),
        ),
        (
            f"{SPREAD}, server CPU per request, nodes summed",
            f"{SPREAD}, one node alone: server CPU per request",
            f"{SPREAD}, total",
            f"{SPREAD}, one node alone: total",
        ),
    ),
    Target(
        "4. no regression: local calls, 1,000 actors, 100 callers >= 1.6x a trio"
        " memory-channel round trip (1.76x before issue 10)",
        (Bound("local invoke 1,000 actors / channel round trip", ">=", 1.6),),
        ("local invoke, 1,000 actors, 100 callers",),
    ),
    Target(
        "4. no regression: activations in one process >= 0.95x a channel round trip"
        " (1.06x before issue 10)",
        (Bound("activations / channel round trip", ">=", 0.95),),
        ("activations, 100 callers",),
    ),
    Target(
        "4. no regression: memory per idle actor <= 440 B (403 B before issue 10), and flat"
        " under a stream of new ids once max_actors is reached (RSS at the end within 10%"
        " of RSS at the cap)",
        (
            Bound("idle actor memory (* actors)", "<=", 440),
            Bound("* new ids, max_actors *: RSS at the end / at the cap", "<=", 1.1),
        ),
    ),
    Target(
        "4. no regression: a forwarded call <= 2x a local HTTP call at p50, one at a time"
        " (1.94x before issue 10)",
        (Bound("cluster sequential on node 1, forwarded / local call, p50", "<=", 2),),
        (
            "cluster * -c50 on node 1, forwarded calls (actors on node 2)",
            "cluster * -c50 on node 1, local calls (actors on node 1)",
        ),
    ),
    Target(
        "4. no regression: 3-node cluster, new ids on all nodes: no errors, no actor on two nodes",
        (
            Bound(f"{COLD}, failed", "==", 0),
            Bound(f"{COLD_CHECK}: ids on 2+ nodes, of *", "==", 0),
            Bound(f"{COLD_CHECK}: answered ids nowhere, of *", "==", 0),
        ),
        (f"{COLD}, activations",),
    ),
    Target(
        "issue 12: persistent writes, SQLite store, 100 actors each writing once per call"
        " >= 20,000 writes/s and >= 10x one statement per thread hop (same rounds)",
        (
            Bound(WRITES, ">=", 20_000),
            Bound("persistent writes / thread-hop writes", ">=", 10),
        ),
        (
            "thread-hop writes, * tasks",
            "persistent writes, CPU per write",
            "thread-hop writes, CPU per write",
            "persistent writes / calls without state",
            "the same, awaiting once, without state, * callers, each to its own actor",
            "persistent writes / calls awaiting once without state",
            "the same, awaiting once, CPU per call",
            "store writes alone, sqlite store, * tasks",
            "store writes alone / thread-hop writes",
            "store writes alone, CPU per write",
        ),
    ),
    Target(
        "issue 12: a call that reads persistent state without writing it <= 1.1x the time"
        " of a call to an actor without state (1,000 actors, 100 callers, same rounds)",
        (Bound("read-only call / call without state, time per call", "<=", 1.1),),
        (
            READ,
            PLAIN_CALL,
            "read-only call, persistent state, CPU per call",
            "call, no state, CPU per call",
        ),
    ),
    Target(
        "issue 12: (reported, no bound) activations of actors with persistent state, by"
        " store, and of the same actors without state",
        (),
        (
            "activations, no state, * callers",
            *(f"activations, {store} store, * callers" for store in STATE_STORES),
            *(f"activations, {store} store, CPU per activation" for store in STATE_STORES),
        ),
    ),
    Target(
        "issue 13: memory per idle actor with one timer registered <= 1 KB (1,024 bytes)",
        (Bound(IDLE_TIMER, "<=", 1024),),
        (
            "idle actor without a timer, memory (* actors)",
            "idle actor memory, with a timer - without",
            "idle actor with a timer, traced allocations (* more actors)",
            "idle actor without a timer, traced allocations (* more actors)",
        ),
    ),
    Target(
        "issue 13: (reported, no bound) reminder ticks delivered per second on one node,"
        " all due at once, with their lateness and CPU per tick",
        (),
        tuple(
            f"reminder ticks, {case}{what}"
            for case in REMINDER_CASES
            for what in (
                ", * due at once",
                ", first tick late",
                ", lateness p50",
                ", lateness p99",
                ", CPU per tick",
                ", over a second late",
            )
        ),
    ),
    Target(
        "issue 13: (reported, no bound) timer ticks on one node, actors each with a timer",
        (),
        (
            f"{TICKS}: ticks asked",
            f"{TICKS}: ticks fired",
            f"{TICKS}: ticks run",
            f"{TICKS}: CPU per tick run",
        ),
    ),
    Target(
        "observability: with metrics on, local calls (1 actor, 1,000 actors; 100 callers)"
        " and HTTP /invoke (hot actor, 10,000 random ids) lose at most 5% of their"
        " throughput: >= 0.95x the same with metrics off, same rounds",
        tuple(Bound(f"{load}, metrics on / off", ">=", 0.95) for load in OBSERVED_LOADS),
        tuple(
            f"{load}{what}"
            for load in OBSERVED_LOADS
            for what in (", metrics on", ", metrics off", ", metrics on / off, CPU per *")
        ),
    ),
    Target(
        "observability: every call traced with a provider configured (spans exported /"
        " calls >= 0.99); the cost of a span per call reported, no bound: tracing on (an"
        " SDK provider, BatchSpanProcessor, an exporter that drops spans) / off, metrics on"
        " both, same rounds",
        (
            Bound("local, tracing on: spans exported / calls", ">=", 0.99),
            Bound(
                f"observability {HTTP} tracing on: spans exported / requests answered", ">=", 0.99
            ),
        ),
        tuple(
            f"{load}{what}"
            for load in OBSERVED_LOADS
            for what in (", tracing on / off", ", tracing on / off, CPU per *")
        ),
    ),
    Target(
        "issue 15: the outside client, random ids over a 3-node cluster in one process:"
        " >= 1x the calls/s of the same calls all sent to one node (same tasks, same"
        " rounds), forwarding at most 1% of its calls",
        (
            Bound(f"{REMOTE}, client / one node, calls/s", ">=", 1),
            Bound(f"{REMOTE}, client, forwarded", "<=", 1),
        ),
        (
            f"{REMOTE}, client",
            f"{REMOTE}, one node",
            f"{REMOTE}, one node, forwarded",
            f"{REMOTE}, client / one node, CPU per call",
        ),
    ),
    Target(
        "issue 16: a node's cost flat in N (simulated, heartbeat 1 s): messages and bytes"
        " an idle node sends per s at the largest N <= 1.5x at the smallest N, and the"
        " time for a node that stops answering to be out everywhere <= 3x",
        (
            Bound("idle node, messages sent per s, largest / smallest N", "<=", 1.5),
            Bound("idle node, bytes sent per s, largest / smallest N", "<=", 1.5),
            Bound("a node stops answering: out everywhere, largest / smallest N", "<=", 3),
        ),
        tuple(
            f"{what}, N={size}"
            for what in (
                "idle node, messages sent per s",
                "idle node, bytes sent per s",
                "idle node, filters fetched per s",
                "a node stops answering: out everywhere",
                "a node joins: placed everywhere",
            )
            for size in (10, 50, 100, 200)
        ),
    ),
    Target(
        "issue 16: real processes on loopback, heartbeat 0.5 s: CPU of an idle node at the"
        " largest size <= 2x at the smallest (12 and 3 nodes; 4.5x before issue 16)",
        (Bound("idle CPU per node, * nodes / * nodes", "<=", 2),),
        tuple(
            f"idle cluster of {size}, CPU per node, {what}"
            for size in (3, 6, 12, 24)
            for what in ("mean", "max")
        ),
    ),
]


def target_lines(figures: list[Figure]) -> list[str]:
    """One line per target: ``target: ..., measured: ..., beside: ..., met: yes/no``."""
    by_name = {f.name: f for f in figures}
    lines = []
    for target in TARGETS:
        checks = [bound.check(by_name) for bound in target.bounds]
        shown = [figure for name in target.beside if (figure := _find(by_name, name))]
        if any(check is None for check in checks) or not (checks or shown):
            lines.append(f"- target: {target.text}; measured: not in this run; met: -")
            continue
        parts = [f"- target: {target.text}"]
        if checks:
            parts.append("measured: " + "; ".join(check[0] for check in checks if check))
        if shown:
            parts.append("beside: " + "; ".join(_text(figure) for figure in shown))
        if checks:
            parts.append("met: " + ("yes" if all(check[1] for check in checks if check) else "no"))
        lines.append("; ".join(parts))
    return lines


def how_fast(figures: list[Figure]) -> list[str]:
    """The README's "How fast" table: each figure as a ratio to what it was measured
    against in the same run, the absolute figures beside it. Rows whose figures were
    not measured are left out; no rows, no table."""
    by_name = {f.name: f for f in figures}

    def m(name: str) -> str:
        figure = _find(by_name, name)
        if figure is None:
            raise LookupError(name)
        return num(figure.median)

    def http(case: str, yardstick: str) -> tuple[str, str]:
        return (
            f"{m(f'{HTTP} {case} / yardstick')}x the raw-trio yardstick's requests/s,"
            f" p99 {m(f'{HTTP} {case}{P99_RATIO}')}x its p99, CPU per request"
            f" {m(f'{HTTP} {case}{CPU_RATIO}')}x its;"
            f" {m(f'{HTTP} {case} / hypercorn')}x stock Hypercorn's raw ASGI hello",
            f"{m(f'{HTTP} {case}')} requests/s, p99 {m(f'{HTTP} {case}, p99')} ms,"
            f" {m(f'{HTTP} {case}, server CPU per request')} µs CPU per request"
            f" (yardstick: {m(f'{HTTP} {yardstick}')} requests/s,"
            f" {m(f'{HTTP} {yardstick}, server CPU per request')} µs)",
        )

    def workers() -> tuple[str, str]:
        case = f"{WORKERS} {RANDOM}"
        return (
            f"{m(f'{case}, 2 workers / 1 worker CPU per request')}x the CPU per request of"
            f" `--workers 1`; {m(f'{case}, 2 workers / 1 worker requests/s')}x its requests/s"
            f" ({os.cpu_count()} cores, the load generator on them too)",
            f"{m(f'{case}, 2 workers, server CPU per request')} against"
            f" {m(f'{case}, 1 worker, server CPU per request')} µs CPU per request;"
            f" {m(f'{case}, 2 workers')} against {m(f'{case}, 1 worker')} requests/s",
        )

    def cluster() -> tuple[str, str]:
        return (
            f"{m(f'{SPREAD}{ALONE_CPU_RATIO}')}x the CPU per request"
            f" (summed over the nodes) of one node alone under the same load;"
            f" {m(f'{SPREAD}{ALONE_RPS_RATIO}')}x its requests/s;"
            f" {m(f'{SPREAD}, failed')} errors, {m(f'{SPREAD_CHECK}: ids on 2+ nodes, of *')}"
            " ids on two nodes",
            f"{m(f'{SPREAD}, total')} requests/s,"
            f" {m(f'{SPREAD}, server CPU per request, nodes summed')} µs CPU per request;"
            f" alone: {m(f'{SPREAD}, one node alone: total')} requests/s,"
            f" {m(f'{SPREAD}, one node alone: server CPU per request')} µs",
        )

    def forward() -> tuple[str, str]:
        concurrent = "cluster * -c50 on node 1"
        return (
            f"{m('cluster sequential on node 1, forwarded / local call, p50')}x the time of a"
            " call its actor's node answers, at p50, one call at a time;"
            f" {m(f'{concurrent}, forwarded / local calls')}x its requests/s under wrk -c50",
            f"{m(f'{concurrent}, forwarded calls (actors on node 2)')} against"
            f" {m(f'{concurrent}, local calls (actors on node 1)')} requests/s",
        )

    def local() -> tuple[str, str]:
        return (
            f"{m('local invoke 1,000 actors / channel round trip')}x a round trip over trio"
            " memory channels to one task",
            f"{m('local invoke, 1,000 actors, 100 callers')} calls/s"
            f" ({m('local invoke, 1,000 actors, 100 callers, hello awaits a checkpoint')}/s"
            " if every method awaits something)",
        )

    def activations() -> tuple[str, str]:
        return (
            f"{m('activations / channel round trip')}x a channel round trip",
            f"{m('activations, 100 callers')} actors/s",
        )

    def writes() -> tuple[str, str]:
        return (
            f"{m('persistent writes / thread-hop writes')}x one SQLite statement per thread"
            f" hop; {m('persistent writes / calls without state')}x the same calls to actors"
            " without state",
            f"{m(WRITES)} writes/s, {m('persistent writes, CPU per write')} µs CPU per write"
            f" (thread hop: {m('thread-hop writes, * tasks')} writes/s,"
            f" {m('thread-hop writes, CPU per write')} µs)",
        )

    def reads() -> tuple[str, str]:
        return (
            f"{m('read-only call / call without state, time per call')}x the time of a call"
            " to an actor without state",
            f"{m(READ)} calls/s, {m('read-only call, persistent state, CPU per call')} µs CPU"
            f" per call (without state: {m(PLAIN_CALL)} calls/s,"
            f" {m('call, no state, CPU per call')} µs)",
        )

    def claims() -> tuple[str, str]:
        ratios, rates = [], []
        for store, label in STATE_STORES.items():
            with contextlib.suppress(LookupError):  # not measured in this run
                rate = m(f"activations, {store} store, * callers")
                ratios.append(f"{label} {m(f'activations, {store} store / no state')}x")
                rates.append(f"{label} {rate}")
        if not ratios:
            raise LookupError("activations with state")
        return (
            ", ".join(ratios) + " the activations/s of the same actors without state",
            ", ".join(rates)
            + f" actors/s (without state: {m('activations, no state, * callers')})",
        )

    def reminders() -> tuple[str, str]:
        burst = _find(by_name, "reminder ticks, memory store, * due at once")
        if burst is None:
            raise LookupError("reminder ticks")
        rates = []
        for case, label in REMINDER_CASES.items():
            rates.append(
                f"{label}: {m(f'reminder ticks, {case}, * due at once')} ticks/s,"
                f" p99 {m(f'reminder ticks, {case}, lateness p99')} ms late,"
                f" {m(f'reminder ticks, {case}, CPU per tick')} µs CPU per tick"
            )
        return (
            f"SQLite {m('reminder ticks, sqlite store / memory store')}x the memory store's"
            " ticks/s; after a restart (ticks loaded from the store)"
            f" {m('reminder ticks, sqlite store, after a restart / memory store')}x",
            "; ".join(rates) + f" ({burst.name.rpartition(', ')[2]})",
        )

    def memory() -> tuple[str, str]:
        return (
            f"memory at the end of a stream of new ids through max_actors:"
            f" {m('* new ids, max_actors *: RSS at the end / at the cap')}x memory at the cap",
            f"{m('idle actor memory (* actors)')} bytes per idle actor",
        )

    def membership() -> tuple[str, str]:
        return (
            "an idle node of 200 (simulated) sends"
            f" {m('idle node, messages sent per s, largest / smallest N')}x the messages"
            " and"
            f" {m('idle node, bytes sent per s, largest / smallest N')}x the bytes of one"
            " of 10; a node that stops answering is out everywhere in"
            f" {m('a node stops answering: out everywhere, largest / smallest N')}x the"
            " time",
            f"{m('idle node, messages sent per s, N=200')} messages,"
            f" {m('idle node, bytes sent per s, N=200')} bytes and"
            f" {m('idle node, filters fetched per s, N=200')} filter fetches a second per"
            " node (heartbeat 1 s); out everywhere in"
            f" {m('a node stops answering: out everywhere, N=200')} s",
        )

    def idle() -> tuple[str, str]:
        ratio = _find(by_name, "idle CPU per node, * nodes / * nodes")
        if ratio is None:
            raise LookupError("idle cluster not measured")
        high, low = re.findall(r"\d+", ratio.name)[:2]
        return (
            f"an idle node of a cluster of {high} uses {num(ratio.median)}x the CPU of one"
            f" of a cluster of {low}",
            f"{m(f'idle cluster of {low}, CPU per node, mean')}% of a core per idle node of"
            f" {low}, {m(f'idle cluster of {high}, CPU per node, mean')}% of one of {high}"
            " (heartbeat 0.5 s)",
        )

    rows: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        (
            "one node process, `GET /invoke/1/hello`, one hot actor",
            lambda: http(HOT, YARDSTICK_HOT),
        ),
        (
            "one node process, a random actor of 10,000 per request",
            lambda: http(RANDOM, YARDSTICK_RANDOM),
        ),
        ("`towtruck serve --workers 2`, random actors", workers),
        ("a 3-node cluster on the same cores, random ids on all nodes", cluster),
        ("a call forwarded to another node", forward),
        ("calls from Python, 1,000 actors, 100 concurrent callers", local),
        ("first calls (activations), in one process", activations),
        ("an idle actor in memory", memory),
        ("persistent writes (SQLite), 100 actors each writing once per call", writes),
        ("a call reading persistent state (1,000 actors, 100 callers)", reads),
        ("first calls to actors with persistent state (each claims the actor)", claims),
        ("reminder ticks delivered, one node", reminders),
        ("membership of an idle cluster, 10 to 200 nodes (simulated)", membership),
        ("an idle cluster of real processes on loopback", idle),
    ]
    lines = []
    for what, row in rows:
        try:
            ratio, absolute = row()
        except LookupError:  # not measured in this run
            continue
        lines.append(f"| {what} | {ratio} | {absolute} |")
    if not lines:
        return []
    return [
        "| | ratio, measured in the same run | absolute, on this machine |",
        "| --- | --- | --- |",
        *lines,
    ]


def machine() -> str:
    """Cores, CPU model, OS, Python, and the HTTP parser towtruck's server uses."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    backend = parser.BACKEND
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        backend += " " + importlib.metadata.version(backend)
    return (
        f"{os.cpu_count()} cores, {model}; {platform.system()} {platform.release()}"
        f" {platform.machine()}; Python {platform.python_version()}"
        f" ({platform.python_implementation()}); HTTP parser in towtruck: {backend}"
    )


def notes(figures: list[Figure]) -> list[str]:
    """What a reader needs to read some of the figures right."""
    by_name = {f.name: f for f in figures}
    lines = []
    if _find(by_name, f"{HTTP} {HOT} / yardstick"):
        lines.append(
            "- The yardstick is issue 10's minimal HTTP/1.1 server on raw trio sockets"
            " (`benchmarks/limit_server.py`, a copy of `../shared/bench/limit_server.py`):"
            " a dict of plain objects, a JSON hello, no routing, no limits. It runs in the"
            " same rounds as towtruck, each towtruck case next to its own. CPU per request"
            " is the server process's user and system time (`/proc/PID/stat`) over a load,"
            " divided by the requests answered."
        )
    random = f"{WORKERS} {RANDOM}"
    load = _find(by_name, f"{random}, 2 workers, load generator CPU")
    if load:
        lines.append(
            f"- On this {os.cpu_count()}-core machine the load generator runs beside the"
            f" workers and keeps {num(load.median)} of a core busy itself, so requests/s"
            " with 2 workers understates them; server CPU per request shows what a request"
            " costs the server whatever the cores (with 2 workers, half the calls are"
            " forwarded from one worker to the other)."
        )
    one = _find(by_name, f"{random}, 1 worker, server CPU per request")
    two = _find(by_name, f"{random}, 2 workers, server CPU per request")
    share = _find(by_name, f"{random}, 2 workers, forwarded")
    if one and two and share and share.median:
        local, mixed = one.median, two.median
        forward = (mixed - local) / (share.median / 100)
        lines.append(
            f"- Server CPU per request, random actors: {local:.0f} µs with 1 worker,"
            f" {mixed:.0f} µs with 2 workers, where {share.median:.0f}% of the calls"
            f" are forwarded: a forward costs about {forward:.0f} µs of CPU on top of"
            " the call. At that cost, 2 workers with a whole core each would give at"
            f" most {2 * local / mixed:.2f}x the throughput of 1 worker with one."
        )
    if _find(by_name, "thread-hop writes, * tasks"):
        lines.append(
            "- Issue 12's thread-hop reference is the same 100 tasks each writing through"
            " `trio.to_thread.run_sync`: one upsert on a shared `sqlite3` connection (WAL,"
            " `synchronous=NORMAL`, a lock, autocommit), one statement and one commit per"
            " hop. CPU per write is the whole process's, every thread (`state.py`)."
        )
    if _find(by_name, f"{SPREAD}, one node alone: total"):
        lines.append(
            "- The lone node of the cluster benchmark has node 1's flags and no peers; it"
            " takes the same three loads as the cluster (all on it), next to the cluster's"
            " in each repetition."
        )
    memory = _find(by_name, "reminder ticks, memory store, * due at once")
    sqlite = _find(by_name, "reminder ticks, sqlite store, * due at once")
    if memory and sqlite:
        lines.append(
            f"- Reference, not a bound: Dapr publishes about {DAPR_SCHEDULER:,} reminder"
            " triggers/s for its Scheduler service (a service of its own, other hardware)."
            f" One towtruck node here delivered {num(memory.median)} ticks/s with the"
            f" memory store ({memory.median / DAPR_SCHEDULER:.2f}x that) and"
            f" {num(sqlite.median)} with SQLite ({sqlite.median / DAPR_SCHEDULER:.2f}x)."
        )
    if _find(by_name, "reminder ticks, sqlite store, after a restart, * due at once"):
        lines.append(
            "- Reminder ticks (`timers.py`): in the memory and SQLite cases the node that"
            " registered the reminders delivers them, each scheduled by its `remind`; after"
            " a restart, a second node on the same file knows them only from its loads of"
            " the due rows, each `reminder_refresh` (1 s) the 10,000 (`_LOAD`) soonest not"
            " yet marked done (those it holds already among them), and activates each"
            " actor for its tick. Lateness is from `scheduled_at` to `receive_reminder`;"
            " the first tick's is how long the node takes to start on the burst. CPU per"
            " tick is the whole process's, every thread."
        )
    return lines


def report(figures: list[Figure]) -> str:
    """The Markdown report of a run of ``run.py``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    remarks = notes(figures)
    fast = how_fast(figures)
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"- Command: `{shlex.join(['python', *sys.argv])}`",
            f"- Date: {now}",
            f"- Machine: {machine()}",
            "",
            "## Targets",
            "",
            "Medians over the repetitions; ratios are of figures measured in the same run.",
            "",
            *target_lines(figures),
            "",
            *([*remarks, ""] if remarks else []),
            *(["## How fast (for the README)", "", *fast, ""] if fast else []),
            "## Figures",
            "",
            markdown_table(figures),
            "",
        ]
    )
