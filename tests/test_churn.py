"""Churn on real ``towtruck serve`` processes under steady load: nodes killed, added,
removed and restarted one by one. Nothing hangs, every failure is a documented JSON
error, and no actor loses an update unless it lived on a node that was killed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.churn import Load, Node, Processes, membership, processes, wait_joined
from tests.stores import etcd_server, postgres_server, redis_server

__all__ = ["etcd_server", "membership", "postgres_server", "redis_server"]  # fixtures

# Membership and state under churn: how a node reads HTTP is the subject of other tests,
# on both parsers.
pytestmark = [pytest.mark.subprocess, pytest.mark.slow, pytest.mark.parser_free]

#: What a client may see after its one retry, besides success.
DOCUMENTED = (
    "502 CallInterrupted",
    "503 PeerUnavailable",
    "503 NodeStopping",
    "503 MailboxFull",
    "504 CallTimeout",
    "508 ForwardingLoop",
)


def saved_counts(store: Path, ids: list[str]) -> dict[str, int]:
    """Every actor's count, as saved when its node stopped gracefully."""
    return {i: int((store / i).read_text()) if (store / i).exists() else 0 for i in ids}


def journal(store: Path, ids: set[str], nodes: list[Node]) -> str:
    """What the StoredCounters of ``ids`` loaded and saved, in order, and which process
    each node was: for a failure to say what happened."""
    lines = (store / "journal").read_text().splitlines()
    pids = ", ".join(f"{pid} {node.address}" for node in nodes for pid in node.pids)
    return "\n".join([f"processes: {pids}", *(ln for ln in lines if ln.split()[4] in ids)])


def assert_saved_as_answered(
    store: Path, ids: list[str], successes: Counter[str], nodes: list[Node]
) -> None:
    """Every counter of ``ids`` saved as many increments as were answered 200; those
    that did not, with their journal printed (shown with the failure)."""
    saved = saved_counts(store, ids)
    differ = {i for i in ids if saved[i] != successes[i]}
    if differ:
        print(journal(store, differ, nodes))
    assert not differ, {i: (saved[i], successes[i]) for i in sorted(differ)}


async def three_nodes(cluster: Processes, http: httpx.AsyncClient) -> list[Node]:
    """Start three nodes joined through the first; wait until they know each other."""
    first = await cluster.add(None)
    nodes = [first, await cluster.add(first), await cluster.add(first)]
    await wait_joined(http, nodes)
    return nodes


async def restart_in_turn(
    http: httpx.AsyncClient, load: Load, nodes: list[Node], *, calls: int
) -> None:
    """Stop each of ``nodes`` gracefully (out of the load's rotation first) and start it
    again; once the cluster is whole, let ``calls`` more calls complete."""
    for node in nodes:
        load.up.remove(node)
        assert await node.stop() == 0, node.output.text
        await node.start(load.up[0])
        load.up.append(node)
        await wait_joined(http, nodes)
        await load.wait_calls(calls)


async def test_restarting_every_node_in_turn_under_load_fails_no_call(tmp_path: Path) -> None:
    ids = [f"roll{i}" for i in range(40)]
    with trio.fail_after(240):
        async with processes(tmp_path) as cluster, httpx.AsyncClient(timeout=10) as http:
            a, b, c = up = await three_nodes(cluster, http)
            load = Load(ids, up)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.run, 6)
                await load.wait_calls(300)
                await restart_in_turn(http, load, [a, b, c], calls=300)
                load.stop()
            for node in (a, b, c):
                assert await node.stop() == 0, node.output.text
    print("rolling restart:", dict(load.outcomes))  # the figures for the record
    assert load.failures == [], load.outcomes
    # Only 503s were retried: no connection broke under a client.
    assert not any("transport" in outcome for outcome in load.outcomes), load.outcomes
    assert sum(load.successes.values()) >= 1200
    assert_saved_as_answered(tmp_path, ids, load.successes, [a, b, c])


async def test_kill_add_remove_restart_under_load(
    tmp_path: Path, membership: tuple[str, ...]
) -> None:
    ids = [f"soak{i}" for i in range(60)]
    with trio.fail_after(300):
        async with (
            processes(tmp_path, flags=membership) as cluster,
            httpx.AsyncClient(timeout=10) as http,
        ):
            a, b, c = up = await three_nodes(cluster, http)
            load = Load(ids, up)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.run, 6)
                await load.wait_calls(300)

                # kill -9 one node, and bring it back
                up.remove(c)
                lost = {i for i in ids if (await http.get(f"{c.url}/query/{i}")).json()["exists"]}
                await c.kill()
                await load.wait_calls(200)
                await c.start(a)
                up.append(c)
                await wait_joined(http, [a, b, c])
                await load.wait_calls(300)

                # add a fourth
                d = await cluster.add(a)
                up.append(d)
                await wait_joined(http, [a, b, c, d])
                await load.wait_calls(300)

                # remove one, then stop it
                up.remove(b)
                response = await http.get(f"{a.url}/removeserver/{b.address}")
                assert response.status_code == 200, response.text
                await wait_joined(http, [a, c, d])
                await load.wait_calls(200)
                assert await b.stop() == 0, b.output.text
                await load.wait_calls(200)

                # restart each of the others in turn
                await restart_in_turn(http, load, [a, c, d], calls=200)
                load.stop()
            for node in (a, c, d):
                assert await node.stop() == 0, node.output.text
    print("churn:", dict(load.outcomes))  # the figures for the record
    hung = [f for f in load.failures if "hung" in f]
    assert hung == []
    assert all(f.split(": ", 1)[1].startswith(DOCUMENTED) for f in load.failures), load.outcomes
    kept = [i for i in ids if i not in lost]
    assert_saved_as_answered(tmp_path, kept, load.successes, [a, b, c, d])
