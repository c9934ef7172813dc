"""The performance issue's targets, checked against measured figures, and the Markdown
report ``run.py --results PATH`` writes: command, date, machine, targets, table.

A target compares the median of a figure over the repetitions with a bound. Figures
are found by name, with ``*`` for the load generator (``wrk`` or ``python``); a
target whose figures were not measured (``--only``) says so.
"""

from __future__ import annotations

import datetime
import importlib
import operator
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

from _common import Figure, markdown_table, num

import towtruck  # noqa: F401  (it may put the compiled h11 in h11's place)


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
        text = f"{num(figure.median)} {figure.unit} ({figure.name})"
        return text, compare(figure.median, self.limit)


def _find(figures: dict[str, Figure], name: str) -> Figure | None:
    """The measured figure called ``name``, where ``*`` stands for any word."""
    pattern = re.escape(name).replace(r"\*", r"\S+")
    found = (f for key, f in figures.items() if re.fullmatch(pattern, key) and f.values)
    return next(found, None)


_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}

HTTP = "http * -c50"
CLUSTER = "cluster * 3x-c16 new ids"
WORKERS = "workers * -c50"

#: The issue's targets: the text of each, and the bounds that must all hold.
TARGETS: list[tuple[str, list[Bound]]] = [
    (
        "1. HTTP /invoke on one process >= 3x raw ASGI hello on stock Hypercorn-trio,"
        " hot actor and 10,000 random ids",
        [
            Bound(f"{HTTP} hot actor /invoke/1/hello / reference", ">=", 3),
            Bound(f"{HTTP} random actor of 10,000 / reference", ">=", 3),
        ],
    ),
    (
        "1. HTTP /invoke p99 <= 15 ms with 50 connections, hot actor and 10,000 random ids",
        [
            Bound(f"{HTTP} hot actor /invoke/1/hello, p99", "<=", 15),
            Bound(f"{HTTP} random actor of 10,000, p99", "<=", 15),
        ],
    ),
    (
        "2. towtruck serve --workers 2 >= 1.6x the throughput of --workers 1, same run",
        [
            Bound(f"{WORKERS} hot actor, 2 workers / 1 worker", ">=", 1.6),
            Bound(f"{WORKERS} random actor of 10,000, 2 workers / 1 worker", ">=", 1.6),
        ],
    ),
    (
        "3. local calls >= 100,000 invokes/s, 1,000 actors, 100 callers",
        [Bound("local invoke, 1,000 actors, 100 callers", ">=", 100_000)],
    ),
    (
        "3. the same with a method that awaits a checkpoint (not in the issue: for readers)",
        [Bound("local invoke, 1,000 actors, 100 callers, hello awaits a checkpoint", ">=", 1e5)],
    ),
    (
        "4. memory <= 1 KB per idle actor over 200,000 actors",
        [Bound("idle actor memory (200,000 actors)", "<=", 1024)],
    ),
    (
        "5. >= 10,000 forwarded calls/s between two nodes, same run",
        [Bound("cluster * -c50 on node 1, forwarded calls (actors on node 2)", ">=", 10_000)],
    ),
    (
        "5. a forwarded call <= 2x a local HTTP call at p50",
        [Bound("cluster sequential on node 1, forwarded / local call, p50", "<=", 2)],
    ),
    (
        "hardening: under a stream of new ids, memory stays flat once max_actors is reached"
        " (RSS at the end within 10% of RSS at the cap)",
        [Bound("* new ids, max_actors *: RSS at the end / at the cap", "<=", 1.1)],
    ),
    (
        "6. >= 50,000 activations/s in-process",
        [Bound("activations, 100 callers", ">=", 50_000)],
    ),
    (
        "6. 3-node cluster, random new ids on all nodes: >= 3,000 cold activations/s,"
        " no errors, no actor on two nodes",
        [
            Bound(f"{CLUSTER}, activations", ">=", 3_000),
            Bound(f"{CLUSTER}, failed", "==", 0),
            Bound("single activation, new ids: ids on 2+ nodes, of *", "==", 0),
            Bound("single activation, new ids: answered ids nowhere, of *", "==", 0),
        ],
    ),
]


def target_lines(figures: list[Figure]) -> list[str]:
    """One line per target: ``target: ..., measured: ..., met: yes/no``."""
    by_name = {f.name: f for f in figures}
    lines = []
    for text, bounds in TARGETS:
        checks = [bound.check(by_name) for bound in bounds]
        if any(check is None for check in checks):
            lines.append(f"- target: {text}; measured: not in this run; met: -")
            continue
        measured = "; ".join(check[0] for check in checks if check)
        met = "yes" if all(check[1] for check in checks if check) else "no"
        lines.append(f"- target: {text}; measured: {measured}; met: {met}")
    return lines


def machine() -> str:
    """Cores, CPU model, OS, Python, and whether h11 is the compiled build."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    h11 = importlib.import_module("h11")  # after towtruck's
    compiled = "compiled (h11_mypyc)" if h11.__name__ == "h11_mypyc" else "pure Python"
    return (
        f"{os.cpu_count()} cores, {model}; {platform.system()} {platform.release()}"
        f" {platform.machine()}; Python {platform.python_version()}"
        f" ({platform.python_implementation()}); h11 in towtruck: {compiled}"
    )


def notes(figures: list[Figure]) -> list[str]:
    """What a reader needs to read some of the figures right."""
    by_name = {f.name: f for f in figures}
    lines = []
    if _find(by_name, f"{HTTP} hot actor /invoke/1/hello / reference"):
        lines.append(
            "- The HTTP reference is stock Hypercorn: its process does not import towtruck,"
            " so it runs on the pure-Python h11."
        )
    random = f"{WORKERS} random actor of 10,000"
    load = _find(by_name, f"{random}, 2 workers, load generator CPU")
    if load:
        lines.append(
            f"- On this {os.cpu_count()}-core machine the load generator runs beside the"
            f" workers and keeps {num(load.median)} of a core busy itself, so requests/s"
            " with 2 workers understates them; requests per server CPU second shows what"
            " a request costs the server (with 2 workers, half the calls are forwarded"
            " from one worker to the other)."
        )
    one = _find(by_name, f"{random}, 1 worker, per server CPU second")
    two = _find(by_name, f"{random}, 2 workers, per server CPU second")
    share = _find(by_name, f"{random}, 2 workers, forwarded")
    if one and two and share:
        local, mixed = 1e6 / one.median, 1e6 / two.median  # CPU µs per request
        forward = (mixed - local) / (share.median / 100)
        lines.append(
            f"- Server CPU per request, random actors: {local:.0f} µs with 1 worker,"
            f" {mixed:.0f} µs with 2 workers, where {share.median:.0f}% of the calls"
            f" are forwarded: a forward costs about {forward:.0f} µs of CPU on top of"
            " the call. At that cost, 2 workers with a whole core each would give at"
            f" most {2 * local / mixed:.2f}x the throughput of 1 worker with one."
        )
    return lines


def report(figures: list[Figure]) -> str:
    """The Markdown report of a run of ``run.py``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    remarks = notes(figures)
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
            "## Figures",
            "",
            markdown_table(figures),
            "",
        ]
    )
