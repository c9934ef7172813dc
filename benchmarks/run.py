"""Run every benchmark and print one table.

    python benchmarks/run.py                  # full: about eighteen minutes
    python benchmarks/run.py --quick          # smoke test for CI: seconds per benchmark
    python benchmarks/run.py --only cluster   # just that one (repeatable)
    python benchmarks/run.py --results benchmarks/RESULTS.md  # also write a report

Each benchmark also runs alone: ``python benchmarks/local_invoke.py``,
``python benchmarks/state.py``, ``python benchmarks/timers.py``,
``python benchmarks/http_invoke.py``, ``python benchmarks/workers.py``,
``python benchmarks/cluster.py``, ``python benchmarks/observability.py``,
``python benchmarks/remote.py``, ``python benchmarks/simulation.py``,
``python benchmarks/idle_cluster.py``. Figures are
medians (with min and max) over the repetitions; on a shared machine, trust the ratios,
measured in the same run, more than the absolute rates. The report (``--results``) adds
the command, the date, the machine, whether each of the performance issues' targets was
met, and a short table of ratios for the README's "How fast" (``results.py``).
"""

from __future__ import annotations

import argparse
import platform
import sys
from functools import partial
from pathlib import Path

import cluster
import http_invoke
import idle_cluster
import local_invoke
import observability
import remote
import results
import simulation
import state
import timers
import trio
import workers
from _common import common_arguments, table

BENCHMARKS = (
    "local",
    "state",
    "timers",
    "http",
    "workers",
    "cluster",
    "observability",
    "remote",
    "simulation",
    "idle",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    local_invoke.arguments(parser)
    http_invoke.arguments(parser)
    cluster.arguments(parser)
    state.arguments(parser)
    timers.arguments(parser)
    remote.arguments(parser)
    simulation.arguments(parser)
    idle_cluster.arguments(parser)
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run just this one")
    parser.add_argument("--results", type=Path, help="also write a Markdown report to this file")
    args = parser.parse_args()
    only = args.only or BENCHMARKS
    figures = []
    if "local" in only:  # first: its memory figure wants a fresh process
        figures += trio.run(partial(local_invoke.run, **local_invoke.options(args)))
    if "state" in only:
        figures += trio.run(partial(state.run, **state.options(args)))
    if "timers" in only:
        figures += trio.run(partial(timers.run, **timers.options(args)))
    if "http" in only:
        figures += http_invoke.run(**http_invoke.options(args))
    if "workers" in only:
        figures += workers.run(**workers.options(args))
    if "cluster" in only:
        figures += cluster.run(**cluster.options(args))
    if "observability" in only:
        figures += observability.run(**observability.options(args))
    if "remote" in only:
        figures += trio.run(partial(remote.run, **remote.options(args)))
    if "simulation" in only:
        figures += simulation.run(**simulation.options(args))
    if "idle" in only:
        figures += idle_cluster.run(**idle_cluster.options(args))
    print(f"python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(table(figures))
    if args.results:
        args.results.write_text(results.report(figures))
        print(f"report written to {args.results}")


if __name__ == "__main__":
    main()
