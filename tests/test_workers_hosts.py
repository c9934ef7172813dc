"""``towtruck serve --workers`` on several hosts: one cluster of every worker of each.

Two "hosts" on this machine are two supervisors, each binding an address of its own
(127.0.0.2 and 127.0.0.3: all of 127.0.0.0/8 is loopback on Linux).
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
import trio

from tests.helpers import wait_until
from tests.processes import PROCESS_SECONDS, Output, run_to_end, running, towtruck_command
from tests.stores import RedisServer, redis_server
from towtruck import Settings, SettingsError
from towtruck.workers import worker_ports

__all__ = ["redis_server"]  # a fixture, used by name

# How hosts find each other: test_workers serves --workers through both parsers.
pytestmark = [pytest.mark.subprocess, pytest.mark.slow, pytest.mark.parser_free]

HOST_A, HOST_B = "127.0.0.2", "127.0.0.3"
COUNTERS = ["serve", "tests.actors:create_counter", "--workers", "2", "--port", "0"]
COUNTERS += ["--heartbeat-interval", "0.2", "--bloom-interval", "0.2"]
IDS = [f"h{i}" for i in range(40)]
ROUNDS = 3
#: Bound for a cluster of four workers to see each other alive.
FORM_SECONDS = 30


def _ready(host: str) -> str:
    return r"2 workers serving on (http://" + re.escape(host) + r":\d+)"


def _free_ports(count: int, *hosts: str) -> int:
    """A first port of ``count`` in a row free on every one of ``hosts`` (free now: a
    process could take one before the test binds it, which the test would report)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for host in hosts:
                    for port in range(first, first + count):
                        stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
            return first
    raise AssertionError("no free ports in a row")


@contextlib.asynccontextmanager
async def _host(argv: Sequence[str], host: str) -> AsyncIterator[tuple[str, Output]]:
    """A supervisor of two workers serving on ``host``: its public URL and output.
    Stopped gracefully on the way out (it must exit 0)."""
    async with running([*towtruck_command(), *argv], ready=_ready(host)) as (
        supervisor,
        match,
        output,
    ):
        yield match.group(1), output
        supervisor.send_signal(signal.SIGTERM)
        await supervisor.wait()
    assert supervisor.returncode == 0, output.text


async def _wait_one_cluster(client: httpx.AsyncClient, urls: list[str], size: int) -> list[str]:
    """Wait until every worker behind ``urls`` lists the same ``size`` members, all
    alive; returns their addresses."""
    members: set[str] = set()

    async def formed() -> bool:
        members.clear()
        # Ask through the public ports until each has named both its workers.
        for url in urls:
            health = (await client.get(f"{url}/health")).json()
            if len(health["members"]) != size:
                return False
            if any(m["state"] not in ("self", "alive") for m in health["members"]):
                return False
            members.update(m["address"] for m in health["members"])
        if len(members) != size:
            return False
        for address in members:  # and then each worker, on its own address
            health = (await client.get(f"http://{address}/health")).json()
            seen = {m["address"] for m in health["members"]}
            states = {m["state"] for m in health["members"]}
            if seen != members or not states <= {"self", "alive"}:
                return False
        return True

    with trio.fail_after(FORM_SECONDS):
        await wait_until(formed)
    return sorted(members)


async def _check_single_activation(urls: list[str], workers: list[str]) -> set[str]:
    """Call every id ``ROUNDS`` times through each of ``urls`` (a new connection each
    time, so every worker takes some), checking the counters count every call once and
    each id is active on one worker of ``workers``. Returns the workers that answered."""
    answered: set[str] = set()
    # No connection kept: each request opens its own, which the kernel gives to either
    # worker of the host.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(timeout=10, trust_env=False, limits=fresh) as new,
        httpx.AsyncClient(timeout=10, trust_env=False) as client,
    ):
        for round_ in range(ROUNDS * len(urls)):
            url = urls[round_ % len(urls)]
            for actor_id in IDS:
                response = await new.post(f"{url}/invoke/{actor_id}/increment")
                assert response.status_code == 200, response.text
                assert response.json() == round_ + 1, (actor_id, response.text)
            for _ in range(10):
                answered.add((await new.get(f"{url}/health")).json()["node"])
            for actor_id in IDS:
                holders = [
                    worker
                    for worker in workers
                    if (await client.get(f"http://{worker}/query/{actor_id}")).json()["exists"]
                ]
                assert len(holders) == 1, (actor_id, holders)
    return answered


async def test_workers_of_two_hosts_form_one_cluster() -> None:
    with trio.fail_after(3 * PROCESS_SECONDS):
        async with _host([*COUNTERS, "--host", HOST_A], HOST_A) as (url_a, out_a):
            # B joins through A's public address: whichever worker of A answers.
            peer = url_a.removeprefix("http://")
            argv_b = [*COUNTERS, "--host", HOST_B, "--peer", peer]
            async with _host(argv_b, HOST_B) as (url_b, out_b):
                async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                    workers = await _wait_one_cluster(client, [url_a, url_b], 4)
                hosts = sorted(w.rpartition(":")[0] for w in workers)
                assert hosts == [HOST_A, HOST_A, HOST_B, HOST_B], workers
                assert peer not in workers, "the public address is no member"
                answered = await _check_single_activation([url_a, url_b], workers)
                assert set(workers) <= answered, (answered, out_a.text, out_b.text)


async def test_advertised_workers_join_across_hosts_by_peer_dns() -> None:
    """``--advertise HOST:PORT``: each worker binds and advertises a port known in
    advance (PORT, PORT + 1); the second host finds the first by ``--peer-dns`` naming
    its public port, as a Kubernetes Service's would (an IP literal resolves to itself)."""
    first = _free_ports(2, HOST_A, HOST_B)
    argv_a = [*COUNTERS, "--host", HOST_A, "--advertise", f"{HOST_A}:{first}"]
    with trio.fail_after(3 * PROCESS_SECONDS):
        async with _host(argv_a, HOST_A) as (url_a, _):
            argv_b = [*COUNTERS, "--host", HOST_B, "--advertise", f"{HOST_B}:{first}"]
            argv_b += ["--peer-dns", url_a.removeprefix("http://")]
            async with _host(argv_b, HOST_B) as (url_b, _):
                async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                    workers = await _wait_one_cluster(client, [url_a, url_b], 4)
                expected = [f"{h}:{p}" for h in (HOST_A, HOST_B) for p in (first, first + 1)]
                assert workers == expected
                answered = await _check_single_activation([url_a, url_b], workers)
                assert set(workers) <= answered


async def test_workers_of_two_hosts_join_by_a_membership_table(
    redis_server: RedisServer,
) -> None:
    """``--membership``: every worker writes its row under its advertised address and
    joins the others' rows; no ``--peer`` between the hosts."""
    table = ["--membership", f"{redis_server.url}?cluster=workers-{uuid.uuid4().hex[:8]}"]
    first = _free_ports(2, HOST_A, HOST_B)
    argv_a = [*COUNTERS, *table, "--host", HOST_A, "--advertise", f"{HOST_A}:{first}"]
    argv_b = [*COUNTERS, *table, "--host", HOST_B, "--advertise", f"{HOST_B}:{first}"]
    with trio.fail_after(3 * PROCESS_SECONDS):
        async with _host(argv_a, HOST_A) as (url_a, _), _host(argv_b, HOST_B) as (url_b, _):
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                workers = await _wait_one_cluster(client, [url_a, url_b], 4)
            assert workers == [f"{h}:{p}" for h in (HOST_A, HOST_B) for p in (first, first + 1)]
            answered = await _check_single_activation([url_a, url_b], workers)
            assert set(workers) <= answered


async def test_advertised_public_port_means_the_ports_after_it() -> None:
    """``--advertise HOST:PORT`` naming the public port itself (as a single node would)
    gives the workers PORT + 1 and PORT + 2."""
    public = _free_ports(3, HOST_A)
    argv = [*COUNTERS[:-2], "--port", str(public), "--host", HOST_A]
    argv += ["--heartbeat-interval", "0.2", "--advertise", f"{HOST_A}:{public}"]
    with trio.fail_after(2 * PROCESS_SECONDS):
        async with _host(argv, HOST_A) as (url, output):
            assert url == f"http://{HOST_A}:{public}"
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                workers = await _wait_one_cluster(client, [url], 2)
            assert workers == [f"{HOST_A}:{public + 1}", f"{HOST_A}:{public + 2}"]
            assert f"(in the cluster: {HOST_A}:{public + 1}, {HOST_A}:{public + 2})" in output.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--port", "8081", "--advertise", "127.0.0.1:8080"],
            "towtruck: error: --advertise 127.0.0.1:8080: the worker ports 8080-8081"
            " include the public port 8081",
        ),
        (
            ["--advertise", "127.0.0.1:65535"],
            "towtruck: error: --advertise 127.0.0.1:65535: the 2 worker ports from 65535"
            " run past 65535",
        ),
        (
            ["--advertise", "pod.example"],
            "towtruck: error: --advertise: 'pod.example' is not an address: expected host:port",
        ),
    ],
)
async def test_advertise_forms_refused_with_workers(flags: list[str], message: str) -> None:
    argv = [*towtruck_command(), "serve", "examples.greeter", "--workers", "2", *flags]
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end(argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_an_advertised_port_in_use_is_named() -> None:
    first = _free_ports(2, HOST_A)
    with socket.socket() as taken:
        taken.bind((HOST_A, first + 1))
        taken.listen()
        argv = [*towtruck_command(), "serve", "examples.greeter", "--workers", "2"]
        argv += ["--host", HOST_A, "--port", "0", "--advertise", f"{HOST_A}:{first}"]
        with trio.fail_after(PROCESS_SECONDS):
            result = await run_to_end(argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"towtruck: error: --advertise {HOST_A}:{first}: worker 1's port {first + 1}:"
        " address already in use\n"
    )


def test_worker_ports() -> None:
    assert worker_ports(Settings(workers=3)) is None
    assert worker_ports(Settings(workers=3, advertise="pod:9000")) == [9000, 9001, 9002]
    assert worker_ports(Settings(workers=2, port=9000, advertise="pod:9000")) == [9001, 9002]
    with pytest.raises(SettingsError, match="include the public port 9001"):
        worker_ports(Settings(workers=2, port=9001, advertise="pod:9000"))
