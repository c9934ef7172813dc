"""Workers benchmark: ``towtruck serve --workers 2`` against ``--workers 1``, same run.

Both servers run ``python -m towtruck serve examples.greeter:create_actor --max-actors
20000 --workers N`` (N = 1, 2); the load is ``wrk -t1 -c50`` on one hot actor and on a
random actor among 10,000 per request, the cases alternating within each repetition.
With 2 workers, the workers form a local cluster: half the calls (hot actor included,
as it lives in one worker) reach the other worker first and are forwarded to their
owner; the share, from the workers' ``/health``, is a figure of its own.

On a machine with few cores the load generator competes with the workers for CPU, so
requests/s understates what 2 workers give. The benchmark also reads the CPU time used
by the server's processes (the supervisor and its workers, from ``/proc``) and by the
load generator (this process's waited-for children), and reports the server's CPU time
per answered request, which does not depend on how many cores the host has, and the
cores each side kept busy. The ratios 2 workers / 1 worker (CPU per request, requests/s)
are taken within each repetition, the servers' order reversed every other one.

Run it alone with ``python benchmarks/workers.py [--quick] [--generator python]``.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import http_invoke
from _common import Figure, Figures, common_arguments, cpu_seconds, free_ports, table
from http_invoke import CONNECTIONS, HERE, RANDOM_IDS, Load, Server, get_json, server

WORKERS = (1, 2)


def server_command(workers: int, port: int) -> list[str]:
    """``towtruck serve`` with ``workers`` workers on ``port``, flags otherwise equal."""
    command = [sys.executable, "-m", "towtruck", "serve", "examples.greeter:create_actor"]
    command += f"--host 127.0.0.1 --port {port} --max-actors {2 * RANDOM_IDS}".split()
    return [*command, "--workers", str(workers), "--log-level", "warning"]


def label(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def forwarded(node: Server) -> int:
    """Calls the server's workers have forwarded to one another, from each one's
    ``/health`` at its private address (listed in ``members``)."""
    members = get_json(f"{node.url}/health")["members"]
    if len(members) == 1:
        return 0
    return sum(get_json(f"http://{m['address']}/health")["forwarded"] for m in members)


def measure(
    figures: Figures, name: str, node: Server, load: Callable[[], Load]
) -> tuple[Load, float]:
    """Run ``load`` on ``node`` and add its figures under ``name``: requests/s, p99,
    server CPU µs per answered request, the cores the server and the load generator
    kept busy, and the share of calls forwarded between workers. Returns what the load
    measured and the CPU µs per request."""
    processes = node.pids()
    forwarded_before, server_before = forwarded(node), cpu_seconds(processes)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # counts the load once it ends
    start = time.monotonic()
    result = load()
    wall = time.monotonic() - start
    server_cpu = cpu_seconds(processes) - server_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    figures.add(name, "requests/s", result.rps)
    figures.add(f"{name}, p99", "ms", result.p99_ms)
    per_request = 1e6 * server_cpu / max(result.requests, 1)
    figures.add(f"{name}, server CPU per request", "µs", per_request)
    figures.add(f"{name}, server CPU", "cores", server_cpu / wall)
    figures.add(f"{name}, load generator CPU", "cores", load_cpu / wall)
    if len(processes) > 1:
        share = (forwarded(node) - forwarded_before) / result.requests
        figures.add(f"{name}, forwarded", "%", 100 * share)
    return result, per_request


def run(*, duration: int, repeat: int, generator: str) -> list[Figure]:
    """Start a server with each number of workers, warm them up, then measure each case
    on each server ``repeat`` times."""
    load = http_invoke.wrk if generator == "wrk" else http_invoke.python_loadgen
    tag = f"workers {generator} -c{CONNECTIONS}"
    cases = {
        "hot actor": ("/invoke/1/hello", 0),
        f"random actor of {RANDOM_IDS:,}": ("", RANDOM_IDS),
    }
    figures, failed = Figures(), 0
    with contextlib.ExitStack() as stack:
        nodes = {}
        for workers, port in zip(WORKERS, free_ports(len(WORKERS)), strict=True):
            command, url = server_command(workers, port), f"http://127.0.0.1:{port}"
            nodes[workers] = stack.enter_context(
                server(label(workers), command, url, cwd=HERE.parent)
            )
        for node in nodes.values():
            for path, ids in cases.values() if duration >= 3 else ():
                load(f"{node.url}{path}", duration // 3, random_ids=ids)  # warm-up
        for repetition in range(repeat):
            for case, (path, ids) in cases.items():
                rps, cpu = {}, {}
                order = WORKERS if repetition % 2 == 0 else WORKERS[::-1]
                for workers in order:
                    node = nodes[workers]
                    run_load = partial(
                        load, f"{node.url}{path}", duration, random_ids=ids, seed=repetition
                    )
                    name = f"{tag} {case}, {label(workers)}"
                    result, cpu[workers] = measure(figures, name, node, run_load)
                    rps[workers], failed = result.rps, failed + result.failed
                figures.add(f"{tag} {case}, 2 workers / 1 worker requests/s", "x", rps[2] / rps[1])
                figures.add(
                    f"{tag} {case}, 2 workers / 1 worker CPU per request", "x", cpu[2] / cpu[1]
                )
    figures.add(f"{tag} failed requests, all runs", "requests", failed)
    return list(figures.values())


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    return http_invoke.load_options(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    http_invoke.generator_argument(parser)
    print(table(run(**options(parser.parse_args()))))


if __name__ == "__main__":
    main()
