"""Cluster benchmark: three towtruck nodes in three processes, joined as users join them.

Node 1 is ``python -m towtruck serve examples.greeter:create_actor --max-actors 1000000
--max-inactivity 3600`` (so that collection never runs into the measurements); nodes 2
and 3 add ``--peer`` node 1. A fourth node, alone (node 1's flags), takes the same load
as the cluster, for comparison. Once every node of the cluster sees the other two alive:

1. **Throughput over the cluster**: three loads at once, one per node (``wrk -t1 -c16``,
   each request to a random actor among 10,000): the total rate, each node's p50 and
   p99 (wrk's percentiles cannot be merged), failed requests (non-2xx and socket
   errors), and the share of requests forwarded to another node, from the nodes'
   ``/health`` call counts (a forwarded call counts on both nodes), beside the share
   placement predicts. The server CPU time per answered request, summed over the three
   nodes' processes (from ``/proc``), is set against the lone node's under the same
   three loads (all on it), measured next to it in each repetition: the cost of
   spreading the actors over processes.
2. **The cost of a forward**: node 1 is called for 500 actors it owns (local) and 500
   that node 2 owns (forwarded once), all activated beforehand. One connection, one
   request at a time, local and forwarded interleaved: p50, p99 and their ratio. Then
   ``wrk -c50`` on each set in turn: requests/s and their ratio.
3. **Single activation**: after the load, ``/query`` on every node for a sample of the
   10,000 ids and for the 1,000 activated in (2). No id may be active on two nodes, and
   each of the 1,000 must be active on one.
4. **Cold activations**: three loads at once again, but every request goes to an id
   never used before (``new_ids.lua``: a prefix per node and run, then a counter).
   Activations/s over the cluster, exact, from the nodes' ``/health``
   ``catalog.activations``; requests/s; the worst node's p99; failed requests. Then
   (3) for a sample of the ids answered.

The nodes' warnings and errors are counted, and the first few printed to stderr. Run it
alone with ``python benchmarks/cluster.py [--quick] [--generator python]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_invoke
from _common import Figure, Figures, common_arguments, cpu_seconds, free_ports, table
from http_invoke import HERE, Load, Server, get_json, server

from towtruck.cluster import placement

NODES = 3
RANDOM_IDS = 10_000
SPREAD_CONNECTIONS = 16  # per node
FORWARD_CONNECTIONS = 50
POOL = 500  # actors of each kind in the forward cases
JOIN_SECONDS = 30.0
#: The calls to node 1 in case 2, by pool, for the figures' names.
KINDS = {
    "local": "local calls (actors on node 1)",
    "forwarded": "forwarded calls (actors on node 2)",
}


def node_command(member: str, peer: str | None) -> list[str]:
    """``towtruck serve`` at ``member`` (``host:port``), joining through ``peer`` if any."""
    host, port = member.split(":")
    command = [sys.executable, "-m", "towtruck", "serve", "examples.greeter:create_actor"]
    command += ["--host", host, "--port", port, "--max-actors", "1000000"]
    command += ["--max-inactivity", "3600"]
    return command + (["--peer", peer] if peer else [])


@contextlib.contextmanager
def cluster(logs: Path) -> Iterator[list[Server]]:
    """Start the nodes, node 1 first and the others joining through it, each in its own
    process group with its output in ``logs/nodeN.log``; yield them once each sees the
    others alive. Every node is killed when the block ends, even on error."""
    members = [f"127.0.0.1:{port}" for port in free_ports(NODES)]
    with contextlib.ExitStack() as stack:
        nodes = []
        for n, member in enumerate(members, 1):
            command = node_command(member, members[0] if n > 1 else None)
            log = logs / f"node{n}.log"
            nodes.append(
                stack.enter_context(
                    server(f"node {n}", command, f"http://{member}", cwd=HERE.parent, log_path=log)
                )
            )
        deadline = time.monotonic() + JOIN_SECONDS
        while not all(_joined(member, members) for member in members):
            if time.monotonic() > deadline:
                views = {m: get_json(f"http://{m}/health")["members"] for m in members}
                raise RuntimeError(f"the nodes did not join in {JOIN_SECONDS} s: {views}")
            time.sleep(0.1)
        yield nodes


def address(node: Server) -> str:
    """A node's ``host:port``."""
    return node.url.removeprefix("http://")


def _joined(member: str, members: list[str]) -> bool:
    """Whether ``member`` lists the others in ``/getservers`` and sees them alive."""
    others = sorted(set(members) - {member})
    health = get_json(f"http://{member}/health")
    alive = sorted(m["address"] for m in health["members"] if m["state"] == "alive")
    return bool(get_json(f"http://{member}/getservers") == others == alive)


def owned_ids(members: list[str], owner: str, count: int, prefix: str) -> list[str]:
    """The first ``count`` of the ids ``prefix0``, ``prefix1``... placed on ``owner``."""
    candidates = (f"{prefix}{n}" for n in itertools.count())
    ids = (i for i in candidates if placement.owner(i, members) == owner)
    return [next(ids) for _ in range(count)]


@dataclass
class Spread:
    """What loads on several nodes at once measured.

    Attributes:
        loads: One per load generator.
        cpu_seconds: CPU time the loaded nodes' processes used meanwhile.
    """

    loads: list[Load]
    cpu_seconds: float

    @property
    def requests(self) -> int:
        """Requests answered."""
        return sum(load.requests for load in self.loads)

    @property
    def rps(self) -> float:
        """Requests answered per second, all loads together."""
        return sum(load.rps for load in self.loads)

    @property
    def failed(self) -> int:
        return sum(load.failed for load in self.loads)

    @property
    def worst_p99(self) -> float:
        return max(load.p99_ms for load in self.loads)

    @property
    def cpu(self) -> float:
        """The nodes' CPU µs per answered request, summed over the nodes."""
        return 1e6 * self.cpu_seconds / max(self.requests, 1)


@dataclass
class Cases:
    """The measurements, on a running cluster; each adds its figures to ``figures``.

    Attributes:
        nodes: The cluster's nodes, node 1 first.
        single: A node alone, for comparison.
        load: ``http_invoke.wrk`` or ``http_invoke.python_loadgen``.
        generator: Its name, for the figures' names.
        duration: Seconds per load.
        repeat: Repetitions of each measurement.
        figures: What the cases measured.
    """

    nodes: list[Server]
    single: Server
    load: Callable[..., Load]
    generator: str
    duration: int
    repeat: int
    figures: Figures = field(default_factory=Figures)

    @property
    def members(self) -> list[str]:
        """The cluster's nodes' ``host:port``, node 1 first."""
        return [address(node) for node in self.nodes]

    def spread_throughput(self) -> None:
        """Case 1: a load on every node at once, random actors among ``RANDOM_IDS``; and
        the same loads, all on the lone node, next to it."""
        tag = f"cluster {self.generator} {NODES}x-c{SPREAD_CONNECTIONS} random of {RANDOM_IDS:,}"
        alone = [self.single] * NODES
        if self.duration >= 3:  # warm-ups, not reported
            self._load_all()
            self._load_all(on=alone)
        for repetition in range(self.repeat):
            if repetition % 2:  # the lone node first every other repetition
                single = self._spread(alone)
            before = self._calls()
            spread = self._spread()
            # wrk and loadgen.py count answered requests only; the nodes also received
            # the one in flight on each connection when the load stopped.
            forwarded = self._calls() - before - spread.requests - NODES * SPREAD_CONNECTIONS
            if repetition % 2 == 0:
                single = self._spread(alone)
            self.figures.add(f"{tag}, total", "requests/s", spread.rps)
            for n, result in enumerate(spread.loads, 1):
                self.figures.add(f"{tag}, node {n} p50", "ms", result.p50_ms)
                self.figures.add(f"{tag}, node {n} p99", "ms", result.p99_ms)
            self.figures.add(f"{tag}, failed", "requests", spread.failed)
            self.figures.add(f"{tag}, forwarded", "%", 100 * forwarded / spread.requests)
            self.figures.add(f"{tag}, server CPU per request, nodes summed", "µs", spread.cpu)
            self.figures.add(f"{tag}, one node alone: total", "requests/s", single.rps)
            self.figures.add(f"{tag}, one node alone: worst p99", "ms", single.worst_p99)
            self.figures.add(f"{tag}, one node alone: failed", "requests", single.failed)
            self.figures.add(f"{tag}, one node alone: server CPU per request", "µs", single.cpu)
            self.figures.add(
                f"{tag}, CPU per request / one node alone's", "x", spread.cpu / single.cpu
            )
            self.figures.add(f"{tag}, total / one node alone's", "x", spread.rps / single.rps)
        ids = [str(n) for n in range(1, RANDOM_IDS + 1)]
        elsewhere = sum(placement.owner(i, self.members) != m for m in self.members for i in ids)
        self.figures.add(f"{tag}, forwarded by placement", "%", 100 * elsewhere / NODES / len(ids))

    def _spread(self, on: list[Server] | None = None) -> Spread:
        """:meth:`_load_all`, with the CPU time the loaded nodes' processes used."""
        pids = sorted({pid for node in on or self.nodes for pid in node.pids()})
        before = cpu_seconds(pids)
        loads = self._load_all(on=on)
        return Spread(loads, cpu_seconds(pids) - before)

    def _load_all(self, new_ids: str = "", on: list[Server] | None = None) -> list[Load]:
        """Load every node (or each of ``on``) at once, each with its own random
        sequence of ids, or, with ``new_ids``, with new ids: ``{new_ids}{n}-1``,
        ``-2``... on node ``n``."""
        targets = self.nodes if on is None else on
        with ThreadPoolExecutor(len(targets)) as pool:
            runs = []
            for n, node in enumerate(targets):
                ids = {"new_ids": f"{new_ids}{n}-"} if new_ids else {"random_ids": RANDOM_IDS}
                runs.append(
                    pool.submit(
                        self.load,
                        node.url,
                        self.duration,
                        connections=SPREAD_CONNECTIONS,
                        seed=n,
                        **ids,
                    )
                )
            return [run.result() for run in runs]

    def _calls(self) -> int:
        """Calls the nodes have received, a forwarded call counted on both nodes."""
        return sum(get_json(f"http://{m}/health")["calls"] for m in self.members)

    def _activations(self) -> int:
        """Actors the nodes have activated since they started."""
        return sum(get_json(f"http://{m}/health")["catalog"]["activations"] for m in self.members)

    def sequential_forward_cost(self, local: list[str], remote: list[str], calls: int) -> None:
        """Case 2, one request at a time: ``calls`` to node 1 for ``local`` actors
        interleaved with as many for ``remote`` ones."""
        tag = "cluster sequential on node 1"
        interleaved = [actor for pair in zip(local, remote, strict=True) for actor in pair]
        paths = [f"/invoke/{interleaved[n % len(interleaved)]}/hello" for n in range(2 * calls)]
        for _ in range(self.repeat):
            seconds = timed_gets(self.members[0], paths)
            p50 = {}
            for name, values in (("local", seconds[0::2]), ("forwarded", seconds[1::2])):
                p50[name] = percentile(values, 0.5)
                self.figures.add(f"{tag}, {KINDS[name]}, p50", "ms", 1e3 * p50[name])
                p99 = percentile(values, 0.99)
                self.figures.add(f"{tag}, {KINDS[name]}, p99", "ms", 1e3 * p99)
            ratio = p50["forwarded"] / p50["local"]
            self.figures.add(f"{tag}, forwarded / local call, p50", "x", ratio)

    def concurrent_forward_cost(self, ids_files: dict[str, Path]) -> None:
        """Case 2 under load: ``FORWARD_CONNECTIONS`` connections to node 1, for the
        actors listed in each of ``ids_files`` (``local``, ``forwarded``) in turn."""
        tag = f"cluster {self.generator} -c{FORWARD_CONNECTIONS} on node 1"
        url, failed = f"http://{self.members[0]}", 0
        for _ in range(self.repeat):
            rps = {}
            for name, path in ids_files.items():
                result = self.load(
                    url, self.duration, ids_file=path, connections=FORWARD_CONNECTIONS
                )
                rps[name], failed = result.rps, failed + result.failed
                self.figures.add(f"{tag}, {KINDS[name]}", "requests/s", result.rps)
                self.figures.add(f"{tag}, {KINDS[name]}, p50", "ms", result.p50_ms)
            ratio = rps["forwarded"] / rps["local"]
            self.figures.add(f"{tag}, forwarded / local calls", "x", ratio)
        self.figures.add(f"{tag}, failed, all runs", "requests", failed)

    def single_activation(self, name: str, sample: list[str], answered: list[str]) -> None:
        """Case 3: no id of ``sample`` or ``answered`` active on two nodes; every one of
        ``answered`` active on one."""
        counts = active_on(self.members, sample + answered)
        tag = f"single activation, {name}:"
        on_two = sum(count > 1 for count in counts)
        nowhere = sum(count == 0 for count in counts[len(sample) :])
        self.figures.add(f"{tag} ids on 2+ nodes, of {len(counts):,}", "ids", on_two)
        self.figures.add(f"{tag} answered ids nowhere, of {len(answered):,}", "ids", nowhere)

    def cold_activations(self, sample: int) -> list[str]:
        """Case 4: a load on every node at once, each request for a new id; return
        ``sample`` of the ids answered."""
        tag = f"cluster {self.generator} {NODES}x-c{SPREAD_CONNECTIONS} new ids"
        answered: list[str] = []
        for run in range(self.repeat):
            before = self._activations()
            loads = self._load_all(new_ids=f"cold{run}-")
            activations = self._activations() - before
            timed = [result.requests / result.rps for result in loads if result.rps]
            seconds = max(timed, default=self.duration)  # as the load generators timed it
            self.figures.add(f"{tag}, activations", "actors/s", activations / seconds)
            self.figures.add(f"{tag}, total", "requests/s", sum(result.rps for result in loads))
            self.figures.add(f"{tag}, worst node p99", "ms", max(r.p99_ms for r in loads))
            self.figures.add(f"{tag}, failed", "requests", sum(result.failed for result in loads))
            # The load generators count answers; the last id sent on each connection
            # may have been in flight when they stopped, so leave those out.
            for n, result in enumerate(loads):
                last = result.requests - SPREAD_CONNECTIONS
                answered += [f"cold{run}-{n}-{k}" for k in range(1, last + 1)]
        return random.sample(answered, min(sample, len(answered)))


def timed_gets(member: str, paths: list[str]) -> list[float]:
    """GET each path in turn on one keep-alive connection; the seconds each took.

    Raises:
        RuntimeError: an answer was not 200.
    """
    host, port = member.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    seconds = []
    try:
        for path in paths:
            start = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            seconds.append(time.perf_counter() - start)
            if response.status != 200:
                raise RuntimeError(f"GET {path} on {member}: {response.status} {body[:300]!r}")
    finally:
        connection.close()
    return seconds


def active_on(members: list[str], ids: list[str]) -> list[int]:
    """For each id, how many nodes answer ``{"exists": true}`` on ``/query``."""
    counts = [0] * len(ids)
    for member in members:
        host, port = member.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for n, actor_id in enumerate(ids):
                connection.request("GET", f"/query/{actor_id}")
                counts[n] += json.loads(connection.getresponse().read())["exists"]
        finally:
            connection.close()
    return counts


def percentile(values: list[float], fraction: float) -> float:
    """The value ``fraction`` of the way up ``values`` once sorted (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def logged_problems(logs: Path) -> list[str]:
    """The WARNING and ERROR lines in the nodes' logs (the lone node's included)."""
    lines = [line for log in sorted(logs.glob("*.log")) for line in log.read_text().splitlines()]
    return [line for line in lines if " WARNING " in line or " ERROR " in line]


def run(
    *, duration: int, repeat: int, generator: str, sequential: int, sample: int
) -> list[Figure]:
    """Start the cluster, then measure each case ``repeat`` times.

    Args:
        duration: Seconds per load.
        repeat: Repetitions of each measurement.
        generator: ``wrk`` or ``python`` (``loadgen.py``).
        sequential: One-at-a-time calls of each kind (local, forwarded).
        sample: Ids whose activations are checked, among the 10,000 and among the new.
    """
    load = http_invoke.wrk if generator == "wrk" else http_invoke.python_loadgen
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory())
        nodes = stack.enter_context(cluster(Path(scratch)))
        (port,) = free_ports(1)
        command, log = node_command(f"127.0.0.1:{port}", None), Path(scratch, "alone.log")
        single = stack.enter_context(
            server("lone node", command, f"http://127.0.0.1:{port}", cwd=HERE.parent, log_path=log)
        )
        cases = Cases(nodes, single, load, generator, duration, repeat)
        members = cases.members
        cases.spread_throughput()
        pools = {
            "local": owned_ids(members, members[0], POOL, "local"),
            "forwarded": owned_ids(members, members[1], POOL, "forwarded"),
        }
        timed_gets(members[0], [f"/invoke/{i}/hello" for ids in pools.values() for i in ids])
        cases.sequential_forward_cost(pools["local"], pools["forwarded"], sequential)
        ids_files = {name: Path(scratch, f"{name}.txt") for name in pools}
        for name, ids in pools.items():
            ids_files[name].write_text("\n".join(ids) + "\n")
        cases.concurrent_forward_cost(ids_files)
        some = [str(n) for n in random.sample(range(1, RANDOM_IDS + 1), sample)]
        cases.single_activation(
            "random and forwarded ids", some, [*pools["local"], *pools["forwarded"]]
        )
        cases.single_activation("new ids", [], cases.cold_activations(sample))
        problems = logged_problems(Path(scratch))
    cases.figures.add("cluster warnings and errors the nodes logged", "lines", len(problems))
    for line in problems[:20]:
        print(line, file=sys.stderr)
    return list(cases.figures.values())


def arguments(parser: argparse.ArgumentParser) -> None:
    """This benchmark's own options (it also takes :mod:`http_invoke`'s ``--generator``)."""
    parser.add_argument("--sequential", type=int, help="one-at-a-time calls of each kind")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`run` from the command line, ``--quick`` applied."""
    return {
        **http_invoke.load_options(args),
        "sequential": args.sequential or (200 if args.quick else 2000),
        "sample": 100 if args.quick else 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser)
    http_invoke.generator_argument(parser)
    arguments(parser)
    print(table(run(**options(parser.parse_args()))))


if __name__ == "__main__":
    main()
