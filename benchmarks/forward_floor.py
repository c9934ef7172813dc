"""Forwarding floor: the CPU a request costs when half its calls are forwarded, at best.

Measures, in the same rounds, the server CPU per request of ``limit_forward.py`` (the
yardstick ``limit_server.py`` as N processes on one ``SO_REUSEPORT`` port, each owning
the ids with ``crc32(id) % N == index`` and forwarding the others to their owner over a
Unix domain socket, with batched frames) with N = 1, 2, 3, and of ``towtruck serve
examples.greeter:create_actor --workers N`` (N = 1, 2, 3), under ``wrk -t1 -c50
--latency`` on one hot actor (``/invoke/1/hello``) and on a random actor among 10,000 per
request. The yardstick itself runs too, as a check that ``limit_forward.py`` with N = 1
is the yardstick, and so does ``limit_forward.py --answer local`` with N > 1 (every
process answers every id itself: N processes, nothing forwarded), a control that
separates the cost of forwarding from that of spreading the load over N processes.
Each repetition runs every server on a load, then the next load; the order of the
servers is reversed every other repetition. For each case it reports
requests/s, p99, the server's CPU µs per answered request (user and system of all its
processes, from ``/proc``), the share of requests forwarded (from the servers' own
counters), and per repetition the ratios N workers / 1 worker, and the CPU µs per
forwarded call: (CPU per request with N - with 1) / forwarded share (and, for the
floor, with N - local with N, over the same share).

Run it with ``python benchmarks/forward_floor.py [--quick] [--markdown]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import http_invoke
from _common import Figure, Figures, common_arguments, descendants, free_ports, num, table
from http_invoke import CONNECTIONS, HERE, RANDOM_IDS, Load, Server, get_json, measured, server
from workers import forwarded as towtruck_forwarded
from workers import server_command

FLOOR = HERE / "limit_forward.py"
YARDSTICK = HERE / "limit_server.py"
LOADS = {"hot actor": ("/invoke/1/hello", 0), f"random of {RANDOM_IDS:,}": ("", RANDOM_IDS)}


@dataclass
class Subject:
    """A server to measure: its name, command, and how to count its forwarded calls."""

    name: str
    kind: str  # "floor", "towtruck" or "yardstick"
    processes: int
    command: list[str]
    url: str
    stats_dir: Path | None = None
    node: Server | None = None

    def forwarded(self) -> int:
        """Calls its processes have forwarded so far."""
        assert self.node is not None
        if self.processes == 1:
            return 0
        if self.kind == "towtruck":
            return towtruck_forwarded(self.node)
        return floor_forwarded(self.node, self.processes, self.stats_dir)


def floor_forwarded(node: Server, processes: int, directory: Path | None) -> int:
    """Calls ``limit_forward.py``'s workers have forwarded: each writes its counters to
    ``directory`` on SIGUSR1 (its workers are the supervisor's children)."""
    assert directory is not None
    for entry in directory.iterdir():
        entry.unlink()
    workers = descendants(node.pid)
    for pid in workers:
        os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while len(list(directory.glob("[0-9]*"))) < processes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"limit_forward's workers {workers} did not write their counters")
        time.sleep(0.01)
    return sum(int(path.read_text().split()[1]) for path in directory.glob("[0-9]*"))


def subjects(
    ports: list[int], stats: Path, floors: list[tuple[int, str]], workers: list[int]
) -> list[Subject]:
    """The servers: the yardstick, the floor for each (N, answer mode), towtruck for each
    number of workers."""
    found = []
    port = iter(ports)
    p = next(port)
    found.append(
        Subject("yardstick", "yardstick", 1, [sys.executable, str(YARDSTICK), str(p)], _url(p))
    )
    for processes, mode in floors:
        p = next(port)
        command = [sys.executable, str(FLOOR), str(p), "-n", str(processes), "--answer", mode]
        directory = stats / f"{processes}-{mode}"
        directory.mkdir()
        name = f"floor N={processes}" + (f" {mode}" if processes > 1 else "")
        found.append(
            Subject(name, "floor", processes, [*command, "--stats", str(directory)], _url(p))
        )
        found[-1].stats_dir = directory
    for count in workers:
        p = next(port)
        found.append(
            Subject(f"towtruck N={count}", "towtruck", count, server_command(count, p), _url(p))
        )
    return found


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def run(
    *,
    duration: int,
    repeat: int,
    generator: str,
    floors: list[tuple[int, str]],
    workers: list[int],
) -> tuple[list[Figure], str]:
    """Start every server, warm them up, measure every (server, load) ``repeat`` times;
    the figures, and a summary table in Markdown."""
    load = http_invoke.wrk if generator == "wrk" else http_invoke.python_loadgen
    figures, failed = Figures(), 0
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        count = 1 + len(floors) + len(workers)
        servers = subjects(free_ports(count), Path(tmp), floors, workers)
        for s in servers:
            probe = "/ping" if s.kind == "towtruck" else None
            s.node = stack.enter_context(
                server(s.name, s.command, s.url, cwd=HERE.parent, probe=probe)
            )
        for s in servers:
            answer = get_json(f"{s.url}/invoke/1/hello")
            if answer != {"hello": "from actor 1"}:
                raise RuntimeError(f"unexpected answer from {s.name}: {answer!r}")
        for s in servers if duration >= 3 else ():  # warm-up, not reported
            for path, ids in LOADS.values():  # towtruck activates its 10,000 actors
                seconds = duration if ids and s.kind == "towtruck" else max(1, duration // 3)
                load(f"{s.url}{path}", seconds, random_ids=ids)
        for repetition in range(repeat):
            for case, (path, ids) in LOADS.items():
                cpu, rps, share = {}, {}, {}
                order = servers if repetition % 2 == 0 else servers[::-1]
                for s in order:
                    assert s.node is not None
                    before = s.forwarded()
                    run_load = partial(
                        load, f"{s.url}{path}", duration, random_ids=ids, seed=repetition
                    )
                    result, cpu[s.name] = measured(s.node, run_load)
                    share[s.name] = (s.forwarded() - before) / max(result.requests, 1)
                    rps[s.name], failed = result.rps, failed + result.failed
                    _add(figures, f"{case}, {s.name}", result, cpu[s.name], share[s.name])
                _ratios(figures, case, servers, cpu, rps, share)
        figures.add("failed requests, all runs", "requests", failed)
    return list(figures.values()), summary(figures, servers)


def _add(figures: Figures, name: str, result: Load, cpu: float, share: float) -> None:
    figures.add(name, "requests/s", result.rps)
    figures.add(f"{name}, p99", "ms", result.p99_ms)
    figures.add(f"{name}, server CPU per request", "µs", cpu)
    figures.add(f"{name}, forwarded", "%", 100 * share)


def _ratios(
    figures: Figures,
    case: str,
    servers: list[Subject],
    cpu: dict[str, float],
    rps: dict[str, float],
    share: dict[str, float],
) -> None:
    """Each N > 1 server against the N = 1 server of its kind, this repetition."""
    ones = {s.kind: s.name for s in servers if s.processes == 1 and s.kind != "yardstick"}
    figures.add(
        f"{case}, floor N=1 / yardstick CPU per request", "x", cpu["floor N=1"] / cpu["yardstick"]
    )
    for s in servers:
        one = ones.get(s.kind)
        if s.processes == 1 or one is None:
            continue
        figures.add(f"{case}, {s.name} / N=1 CPU per request", "x", cpu[s.name] / cpu[one])
        figures.add(f"{case}, {s.name} / N=1 requests/s", "x", rps[s.name] / rps[one])
        if share[s.name] > 0:
            extra = (cpu[s.name] - cpu[one]) / share[s.name]
            figures.add(f"{case}, {s.name}, CPU per forwarded call", "µs", extra)
            local = f"floor N={s.processes} local"
            if s.kind == "floor" and local in cpu:  # the same processes, nothing forwarded
                extra = (cpu[s.name] - cpu[local]) / share[s.name]
                figures.add(f"{case}, {s.name}, CPU per forwarded call vs local", "µs", extra)


def summary(figures: Figures, servers: list[Subject]) -> str:
    """Medians per case in one Markdown table, then the ratios."""

    def median(name: str) -> str:
        figure = figures.get(name)
        return num(figure.median) if figure else "-"

    lines = [
        "| load | server | requests/s | p99 ms | CPU µs/req | forwarded % | CPU / N=1 "
        "| req/s / N=1 | CPU µs per forwarded call | same, vs local N |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case in LOADS:
        for s in servers:
            name = f"{case}, {s.name}"
            cells = [case, s.name, median(name), median(f"{name}, p99")]
            cells += [median(f"{name}, server CPU per request"), median(f"{name}, forwarded")]
            cells += [median(f"{case}, {s.name} / N=1 CPU per request")]
            cells += [median(f"{case}, {s.name} / N=1 requests/s")]
            cells += [median(f"{name}, CPU per forwarded call")]
            cells += [median(f"{name}, CPU per forwarded call vs local")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(figure: Figure) -> str:
    """``median [min-max]`` of a figure."""
    values = figure.values
    return f"{num(statistics.median(values))} [{num(min(values))}-{num(max(values))}]"


def floor_cases(text: str) -> list[tuple[int, str]]:
    """``2:dispatch,2:direct`` -> [(2, "dispatch"), (2, "direct")], with N = 1 first."""
    cases = [(int(n), mode) for n, _, mode in (item.partition(":") for item in text.split(","))]
    return [(1, "direct"), *(case for case in cases if case[0] > 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    http_invoke.generator_argument(parser)
    parser.add_argument(
        "--floors",
        default="2:dispatch,2:direct,2:local,3:dispatch,3:direct,3:local",
        help="limit_forward cases besides N=1, as N:answer-mode,... (modes: direct,"
        " dispatch, task, local: no forwarding, a control)",
    )
    parser.add_argument(
        "--workers", default="1,2,3", help="towtruck --workers counts, 1 included (e.g. 1,2)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown summary")
    args = parser.parse_args()
    workers = sorted({1, *(int(n) for n in args.workers.split(","))})
    options = {
        "duration": max(1, round(args.duration or (1 if args.quick else 5))),
        "repeat": args.repeat or (1 if args.quick else 3),
        "generator": args.generator or http_invoke.load_options(args)["generator"],
    }
    started = time.monotonic()
    figures, markdown = run(**options, floors=floor_cases(args.floors), workers=workers)
    print(
        f"# forward_floor: {options}, {CONNECTIONS} connections, {time.monotonic() - started:.0f} s"
    )
    print(table(figures))
    if args.markdown:
        print()
        print(markdown)
        print()
        for figure in figures:
            if figure.unit == "x" or "forwarded call" in figure.name:
                print(f"- {figure.name}: {spread(figure)} {figure.unit}")


if __name__ == "__main__":
    main()
