"""Idle cluster benchmark: what a cluster that serves nothing costs each node, as it grows.

For each size N (3 and 12 unless told), N towtruck nodes in N processes on 127.0.0.1:
``python -m towtruck serve examples.greeter:create_actor --heartbeat-interval 0.5
--log-level warning``, started one after the other (each once the one before answers
``/ping``), node 1 first and the others with ``--peer`` node 1. Once every node's
``/health`` lists all N members alive, and after 5 s more to settle, nobody calls the
nodes for ``--duration`` seconds (10 unless told). Each node's CPU time over that window
(user and system, from ``/proc/PID/stat``) is its idle cost: probes, gossip, bloom
fetches, timers. A cluster too busy to form by the join deadline is measured as it is,
with a warning: the figures say how many nodes started and how many did not see all N
alive before and after the window. Figures, for each N: CPU per node as % of one core,
mean and max over the nodes; all nodes' CPU summed. Then the mean per node at the
largest N over that at the smallest: 1 where a node's idle cost does not grow with the
cluster. The sizes run one after the other in one invocation, so they share the same
stretch of a noisy machine; many idle processes on few cores are fine here, as long as
their sum stays well below the cores there are (else the per-node figures are capped).

The nodes run in the directory holding the ``towtruck`` package this Python imports, so
``PYTHONPATH=/other/checkout`` measures that checkout (``examples.greeter`` included).
Run it alone with ``python benchmarks/idle_cluster.py [--quick] [--duration S]
[--repeat K] [--sizes 3 12 24] [--logs DIR]`` (``--logs`` keeps the nodes' output).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _common import Figure, Figures, common_arguments, cpu_seconds, descendants, free_ports, table
from cluster import logged_problems

SIZES = (3, 12)
HEARTBEAT_SECONDS = 0.5
SETTLE_SECONDS = 5.0
STOP_SECONDS = 10.0  # SIGTERM to SIGKILL, for all the nodes together
POLL_SECONDS = 0.2
#: How long the nodes may take to start, one after the other, and see each other:
#: imports alone take a second or more of CPU per process.
JOIN_SECONDS_BASE, JOIN_SECONDS_PER_NODE = 30.0, 3.0


def package_root() -> Path:
    """The directory holding the ``towtruck`` package this Python imports."""
    spec = importlib.util.find_spec("towtruck")
    if spec is None or spec.origin is None:
        raise RuntimeError("towtruck is not importable")
    return Path(spec.origin).parent.parent


@dataclass
class Node:
    """A node's process, the ``host:port`` it serves at, and its log."""

    member: str
    process: subprocess.Popen[bytes]
    log: Path

    def cpu(self) -> float:
        """CPU seconds its process (and any below it) has used."""
        return cpu_seconds([self.process.pid, *descendants(self.process.pid)])

    def check_running(self) -> None:
        """Raise, with the end of its log, if its process has ended."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"node {self.member} exited ({self.process.returncode}):\n{self.log_tail()}"
            )

    def log_tail(self) -> str:
        """The end of its output."""
        return self.log.read_text()[-3000:]


@contextlib.contextmanager
def idle_cluster(size: int, logs: Path, client: httpx.Client) -> Iterator[list[Node]]:
    """Start ``size`` nodes one after the other, each in its own process group and
    logging to ``logs``, node 1 first and the others joining through it; yield them once
    every node sees all of them alive, or once the join deadline has passed (with a
    warning on stderr, and without the nodes not started by then). Every node is
    stopped when the block ends, even on error: SIGTERM, then SIGKILL after
    ``STOP_SECONDS``."""
    members = [f"127.0.0.1:{port}" for port in free_ports(size)]
    nodes: list[Node] = []
    try:
        deadline = time.monotonic() + JOIN_SECONDS_BASE + JOIN_SECONDS_PER_NODE * size
        for n, member in enumerate(members):
            # One at a time, as users start them: a node's imports take a second or more
            # of CPU, and many at once would starve the nodes already in the cluster.
            node = start(member, members[0] if n else None, logs / f"node{n + 1}.log")
            nodes.append(node)
            if not up(client, node, deadline):
                if n == 0:
                    raise RuntimeError(f"node 1 did not answer /ping:\n{node.log_tail()}")
                # The cluster is too busy to take more: measure it as it is.
                print(
                    f"warning: node {n + 1} of {size} did not answer /ping in time", file=sys.stderr
                )
                break
        while lagging := not_seeing_all(client, [node.member for node in nodes], size):
            for node in nodes:
                node.check_running()
            if time.monotonic() > deadline:
                print(
                    f"warning: {len(lagging)} of {size} nodes did not see all {size} alive"
                    f" in time: {', '.join(lagging)}",
                    file=sys.stderr,
                )
                break
            time.sleep(POLL_SECONDS)
        yield nodes
    finally:
        stop([node.process for node in nodes])


def start(member: str, peer: str | None, log: Path) -> Node:
    """Start ``towtruck serve`` at ``member``, joining through ``peer`` if any."""
    host, port = member.split(":")
    command = [sys.executable, "-m", "towtruck", "serve", "examples.greeter:create_actor"]
    command += ["--host", host, "--port", port, "--heartbeat-interval", str(HEARTBEAT_SECONDS)]
    command += ["--log-level", "warning", *(["--peer", peer] if peer else [])]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=package_root(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Node(member, process, log)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process's group at once; SIGKILL what is left ``STOP_SECONDS`` later."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def up(client: httpx.Client, node: Node, deadline: float) -> bool:
    """Whether ``node`` answers ``/ping`` before ``time.monotonic()`` reaches ``deadline``.

    Raises:
        RuntimeError: its process ended.
    """
    while time.monotonic() < deadline:
        node.check_running()
        with contextlib.suppress(httpx.HTTPError):
            if client.get(f"http://{node.member}/ping").is_success:
                return True
        time.sleep(POLL_SECONDS)
    return False


def not_seeing_all(client: httpx.Client, members: list[str], size: int) -> list[str]:
    """The nodes whose ``/health`` does not list itself and all the other ``members``
    alive, or that do not answer; all of them if there are fewer than ``size``."""
    if len(members) < size:
        return members
    lagging = []
    for member in members:
        try:
            listed = client.get(f"http://{member}/health").raise_for_status().json()["members"]
        except httpx.HTTPError:
            lagging.append(member)
            continue
        states = {m["address"]: m["state"] for m in listed}
        if any(states.get(m) != ("self" if m == member else "alive") for m in members):
            lagging.append(member)
    return lagging


def run(
    *, sizes: list[int], duration: float, repeat: int, settle: float, logs: Path | None = None
) -> list[Figure]:
    """For each cluster size in turn, start the nodes, let them settle, then measure
    their CPU over ``repeat`` idle windows of ``duration`` seconds each. The nodes'
    output goes to ``logs/n<size>/`` if given, else to a temporary directory."""
    print(f"measuring towtruck from {package_root() / 'towtruck'}", file=sys.stderr)
    figures = Figures()
    means: dict[int, list[float]] = {}
    problems = 0
    timeout = httpx.Timeout(2.0)
    with (
        tempfile.TemporaryDirectory() as scratch,
        httpx.Client(timeout=timeout, trust_env=False) as client,
    ):
        for size in sizes:
            tag = f"idle cluster of {size}"
            here = Path(logs or scratch, f"n{size}")
            here.mkdir(parents=True, exist_ok=True)
            with idle_cluster(size, here, client) as nodes:
                figures.add(f"{tag}, nodes started", "nodes", len(nodes))
                lagging = not_seeing_all(client, [node.member for node in nodes], size)
                figures.add(
                    f"{tag}, nodes not seeing all alive at the start", "nodes", len(lagging)
                )
                time.sleep(settle)
                for _ in range(repeat):
                    percents = idle_percents(nodes, duration)
                    means.setdefault(size, []).append(statistics.mean(percents))
                    figures.add(f"{tag}, CPU per node, mean", "% of a core", means[size][-1])
                    figures.add(f"{tag}, CPU per node, max", "% of a core", max(percents))
                    figures.add(f"{tag}, CPU of all nodes", "% of a core", sum(percents))
                lagging = not_seeing_all(client, [node.member for node in nodes], size)
                figures.add(f"{tag}, nodes not seeing all alive after", "nodes", len(lagging))
                found = logged_problems(here)  # before the stop, which the nodes log
            problems += len(found)
            for line in found[:10]:
                print(f"{tag}: {line}", file=sys.stderr)
    if len(means) > 1:
        low, high = min(means), max(means)
        for small, large in zip(means[low], means[high], strict=True):
            figures.add(f"idle CPU per node, {high} nodes / {low} nodes", "x", large / small)
    figures.add("idle cluster warnings and errors logged before the stop", "lines", problems)
    return list(figures.values())


def idle_percents(nodes: list[Node], duration: float) -> list[float]:
    """Each node's CPU over ``duration`` seconds from now, as % of one core."""
    start_time = time.monotonic()
    before = [node.cpu() for node in nodes]
    time.sleep(duration)
    after = [node.cpu() for node in nodes]
    elapsed = time.monotonic() - start_time
    return [100 * (b - a) / elapsed for a, b in zip(before, after, strict=True)]


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options."""
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help=f"cluster sizes, each measured in turn (default: {' '.join(map(str, SIZES))})",
    )
    parser.add_argument("--logs", type=Path, help="keep the nodes' output in this directory")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    return {
        "sizes": args.sizes or ([3, 6] if args.quick else list(SIZES)),
        "duration": args.duration or (2.0 if args.quick else 10.0),
        "repeat": args.repeat or 1,
        "settle": 1.0 if args.quick else SETTLE_SECONDS,
        "logs": args.logs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    arguments(parser)
    print(table(run(**options(parser.parse_args()))))


if __name__ == "__main__":
    main()
