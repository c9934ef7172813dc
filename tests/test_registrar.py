"""Nodes keeping their membership in a table (``membership=...``), in one process on the
memory table: joining by writing a row, deaths declared once by votes, a node that reads
itself dead joining again, leaving, and a table that does not answer."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import trio

import towtruck
from examples import greeter
from tests.helpers import FAST, TEST_SECONDS, wait_until
from towtruck.cluster.membership import MemberState
from towtruck.cluster.table import Status
from towtruck.cluster.table.memory import MemoryTable, memory_table


@contextlib.asynccontextmanager
async def nodes_on_a_table(
    count: int,
) -> AsyncIterator[tuple[list[towtruck.Node], MemoryTable, contextlib.AsyncExitStack]]:
    name = f"t{uuid.uuid4().hex[:10]}"
    table = memory_table(name)
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                towtruck.open_node(greeter.create_actor, membership=f"memory://{name}", **FAST)
            )
            for _ in range(count)
        ]
        yield nodes, table, stack


def views_agree(nodes: list[towtruck.Node]) -> bool:
    everyone = {str(n.address) for n in nodes}
    return all(
        set(n.router.membership.placement()) == everyone and n.router.gossip.settled for n in nodes
    )


async def test_nodes_join_by_writing_their_rows(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with nodes_on_a_table(3) as (nodes, table, _):

            async def agree() -> bool:
                return views_agree(nodes)

            await wait_until(agree)
            rows = (await table.read()).latest()

            async def all_active() -> bool:
                return all(
                    r.status is Status.ACTIVE for r in (await table.read()).latest().values()
                )

            await wait_until(all_active)
            assert set(rows) == {str(n.address) for n in nodes}
            for i in range(30):
                assert (await http.get(f"{nodes[i % 3].url}/invoke/j{i}/hello")).status_code == 200
    rows = (await table.read()).latest()
    assert {row.status for row in rows.values()} == {Status.LEAVING}  # each left gracefully


async def test_a_dead_node_is_declared_dead_once_and_taken_out() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with nodes_on_a_table(3) as (nodes, table, _):

            async def agree() -> bool:
                return views_agree(nodes)

            await wait_until(agree)
            victim, survivors = nodes[2], nodes[:2]
            generation = victim.router.gossip.registrar.generation  # type: ignore[union-attr]
            victim.kill()

            async def declared() -> bool:
                row = (await table.read()).row(str(victim.address), generation)
                return row is not None and row.status is Status.DEAD

            await wait_until(declared)

            async def taken_out() -> bool:
                return all(
                    n.router.membership.state(str(victim.address)) is MemberState.REMOVED
                    for n in survivors
                )

            await wait_until(taken_out)
            declarations = sum(n.router.gossip.registrar.declared for n in survivors)  # type: ignore[union-attr]
            assert declarations == 1
            row = (await table.read()).row(str(victim.address), generation)
            assert row is not None
            assert set(row.votes) <= {str(n.address) for n in survivors}


async def test_a_node_that_reads_itself_dead_gives_up_its_actors_and_joins_again(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with nodes_on_a_table(3) as (nodes, table, _):

            async def agree() -> bool:
                return views_agree(nodes)

            await wait_until(agree)
            node = nodes[1]
            registrar = node.router.gossip.registrar
            assert registrar is not None
            mine = [
                f"d{i}"
                for i in range(60)
                if node.router.membership.owner(f"d{i}") == str(node.address)
            ]
            for actor_id in mine:
                assert (await http.get(f"{node.url}/invoke/{actor_id}/hello")).status_code == 200
            assert len(node.runtime.catalog) == len(mine) > 0
            old = registrar.generation
            # Its peers declare it dead (as votes after a stall would).
            version = (await table.read()).version
            assert await table.declare_dead(str(node.address), old, version, 0.0)

            async def new_generation() -> bool:
                return (
                    registrar.generation > old
                    and (await table.read()).latest()[str(node.address)].status is Status.ACTIVE
                )

            await wait_until(new_generation)
            await wait_until(agree)
            assert not set(mine) & set(node.runtime.catalog.ids())
            for actor_id in mine:  # called anywhere, each is active once
                await http.get(f"{nodes[0].url}/invoke/{actor_id}/hello")
                await http.get(f"{nodes[2].url}/invoke/{actor_id}/hello")
            for actor_id in mine:
                holders = [n for n in nodes if actor_id in n.runtime.catalog]
                assert len(holders) == 1, actor_id


async def test_no_death_is_decided_while_the_table_does_not_answer() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with nodes_on_a_table(3) as (nodes, table, _):

            async def agree() -> bool:
                return views_agree(nodes)

            await wait_until(agree)
            victim, survivors = nodes[2], nodes[:2]
            generation = victim.router.gossip.registrar.generation  # type: ignore[union-attr]
            table.down = True
            victim.kill()

            async def out_of_placement() -> bool:
                return all(
                    n.router.membership.state(str(victim.address)) is MemberState.DOWN
                    for n in survivors
                )

            await wait_until(out_of_placement)
            # Several rounds with the table down: the victim stays a member (down), not dead.
            with trio.move_on_after(5 * FAST["heartbeat_interval"]):
                await trio.sleep_forever()
            assert all(
                n.router.membership.state(str(victim.address)) is MemberState.DOWN
                for n in survivors
            )
            table.down = False

            async def declared() -> bool:
                row = (await table.read()).row(str(victim.address), generation)
                return row is not None and row.status is Status.DEAD

            await wait_until(declared)


async def test_a_removed_node_sends_its_calls_on_rather_than_serve_alone(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with nodes_on_a_table(3) as (nodes, _, _):
            a, b, gone = nodes

            async def agree() -> bool:
                return views_agree(nodes)

            await wait_until(agree)
            response = await http.get(f"{a.url}/removeserver/{gone.address}")
            assert response.status_code == 200, response.text
            # At once, before its next round of the table: serving alone, it would
            # activate here the actors the others hold, a second copy of each.
            assert not gone.router.membership.alone
            for i in range(20):
                response = await http.post(f"{gone.url}/invoke/r{i}/hello")
                assert response.status_code == 200, response.text
                assert f"r{i}" not in gone.runtime.catalog
                assert f"r{i}" in a.runtime.catalog or f"r{i}" in b.runtime.catalog
