"""Clusters of ``towtruck serve`` processes under load, for the churn tests: start,
stop, kill and restart nodes while clients keep calling."""

from __future__ import annotations

import itertools
import random
import signal
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.processes import ROOT, Output, child_env, towtruck_command
from tests.stores import table_url

SERVING = r"serving on http://127\.0\.0\.1:(\d+)"
#: Timeouts of the nodes: quick failure detection, quick graceful stops.
NODE_FLAGS = [
    "--heartbeat-interval",
    "0.2",
    "--bloom-interval",
    "0.2",
    "--shutdown-timeout",
    "3",
    "--call-timeout",
    "10",
]
#: A client gives up on a call after this (the call timeout, and then some).
CLIENT_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """One ``towtruck serve`` process at a fixed address, restartable."""

    def __init__(self, processes: Processes, port: int) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.url = f"http://{self.address}"
        self.process: trio.Process | None = None
        #: Every process this node has been, first to last.
        self.pids: list[int] = []
        self.output = Output()
        self._processes = processes

    async def start(self, peer: Node | None) -> None:
        """Start the process (joined through ``peer``) and wait until it serves."""
        argv = [
            *towtruck_command(),
            "serve",
            self._processes.factory,
            "--port",
            str(self.port),
            *NODE_FLAGS,
            *self._processes.flags,
            *(["--peer", peer.address] if peer else []),
        ]
        self.output = Output()
        self.process = await trio.lowlevel.open_process(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=child_env(STORE_DIR=str(self._processes.store)),
        )
        self.pids.append(self.process.pid)
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._processes.nursery.start_soon(self.output.pump, self.process.stdout)
        self._processes.nursery.start_soon(self.output.pump, self.process.stderr)
        with trio.fail_after(30):
            await self.output.wait_for(SERVING)

    async def stop(self) -> int:
        """SIGTERM, and wait for the process to exit: its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            return await self.process.wait()

    async def servers(self, http: httpx.AsyncClient) -> list[str]:
        """``/getservers``; a node that does not answer fails the test with its output."""
        try:
            return (await http.get(f"{self.url}/getservers")).json()  # type: ignore[no-any-return]
        except httpx.TransportError as exc:
            status = None if self.process is None else self.process.returncode
            raise AssertionError(
                f"{self.address} did not answer ({exc!r}); exit status {status}; its output:\n"
                + self.output.text[-20_000:]
            ) from exc

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()


class Processes:
    """The nodes of a test, all killed on the way out."""

    def __init__(self, nursery: trio.Nursery, store: Path, factory: str, flags: list[str]) -> None:
        self.nursery = nursery
        self.store = store
        self.factory = factory
        self.flags = flags
        self.nodes: list[Node] = []

    async def add(self, peer: Node | None) -> Node:
        node = Node(self, free_port())
        self.nodes.append(node)
        await node.start(peer)
        return node


@asynccontextmanager
async def processes(
    store: Path, factory: str = "tests.actors:create_stored_counter", flags: tuple[str, ...] = ()
) -> AsyncIterator[Processes]:
    """Nodes serving ``factory`` with ``flags`` (beside the quick timeouts), killed on
    the way out; ``store`` is their ``$STORE_DIR``."""
    async with trio.open_nursery() as nursery:
        cluster = Processes(nursery, store, factory, list(flags))
        try:
            yield cluster
        finally:
            for node in cluster.nodes:
                if node.process is not None and node.process.returncode is None:
                    node.process.kill()
                    with trio.CancelScope(shield=True):
                        await node.process.wait()
            nursery.cancel_scope.cancel()


async def wait_joined(http: httpx.AsyncClient, nodes: list[Node]) -> None:
    """Wait until every node in ``nodes`` lists exactly the others."""
    with trio.fail_after(20):
        while True:
            lists = [await n.servers(http) for n in nodes]
            if all(
                sorted(found) == sorted(m.address for m in nodes if m is not n)
                for n, found in zip(nodes, lists, strict=True)
            ):
                return
            await trio.sleep(0.05)


class Load:
    """Clients incrementing counters through the nodes in ``up``, retrying once (on
    another node) after a 503 or a broken connection, as a client behind a load
    balancer would; a success after a retry is recorded with what was retried."""

    def __init__(self, ids: list[str], up: list[Node]) -> None:
        self.ids = ids
        self.up = up
        self.successes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.outcomes: Counter[str] = Counter()
        self.calls = 0
        self._stop = trio.Event()
        self._progress = trio.Event()

    async def run(self, clients: int) -> None:
        async with trio.open_nursery() as nursery:
            for client in range(clients):
                nursery.start_soon(self._client, client)
            await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def wait_calls(self, count: int) -> None:
        """Wait until ``count`` more calls have completed."""
        target = self.calls + count
        with trio.fail_after(60):
            while self.calls < target:
                await self._progress.wait()

    async def _client(self, number: int) -> None:
        pick = random.Random(number)
        limits = httpx.Limits(max_connections=4)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT, limits=limits) as http:
            for turn in itertools.count():
                if self._stop.is_set():
                    return
                actor_id = self.ids[(number * 7 + turn) % len(self.ids)]
                outcome = await self._call(http, pick, actor_id)
                self.outcomes[outcome] += 1
                self.calls += 1
                self._progress.set()
                self._progress = trio.Event()
                if outcome.startswith("200"):
                    self.successes[actor_id] += 1
                elif outcome != "gave up":
                    self.failures.append(f"{actor_id}: {outcome}")

    #: Answers retried once, on another node.
    retried: tuple[int, ...] = (503,)

    async def send(self, http: httpx.AsyncClient, node: Node, actor_id: str) -> httpx.Response:
        """Send one increment (a POST without a body: a body half sent when a node
        dies leaves httpx's stream to the garbage collector, a ResourceWarning)."""
        return await http.post(f"{node.url}/invoke/{actor_id}/increment")

    def answered(self, actor_id: str, outcome: str) -> None:
        """What the attempt just sent came to (for subclasses that follow each one)."""

    async def _call(self, http: httpx.AsyncClient, pick: random.Random, actor_id: str) -> str:
        first = None
        for _ in range(2):
            node = pick.choice(self.up)
            try:
                response = await self.send(http, node, actor_id)
            except httpx.TimeoutException:
                self.answered(actor_id, "hung")
                return f"no answer in {CLIENT_TIMEOUT} s (hung)"
            except httpx.TransportError as exc:
                outcome = f"transport {type(exc).__name__}"
            else:
                outcome = str(response.status_code)
                if response.status_code != 200:
                    outcome += f" {response.json()['error']['type']}"
            self.answered(actor_id, outcome)
            if outcome == "200":
                return "200" if first is None else f"200 after {first}"
            if not outcome.startswith("transport") and response.status_code not in self.retried:
                return outcome
            first = first or outcome
        return f"{first}, then {outcome}"


@pytest.fixture(params=["gossip", "redis", "postgres", "etcd"])
def membership(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The flags of a cluster keeping its membership by gossip alone, or in each table
    (where a node killed or stalled long enough is declared dead, and joins again)."""
    if request.param == "gossip":
        return ()
    return ("--membership", table_url(request, request.param, f"c{uuid.uuid4().hex[:8]}"))
