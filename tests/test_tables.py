"""The contract every membership table keeps, run against each backend: memory, a real
redis-server, a real PostgreSQL and a real etcd (see ``tests/stores.py``). Each test
has a cluster of its own in the table (``?cluster=...``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from towtruck.cluster.table import MembershipTable, Status, open_table
from towtruck.errors import SettingsError, StoreUnavailable

from .stores import TABLE_BACKENDS, etcd_server, postgres_server, redis_server, table_url

pytestmark = pytest.mark.parser_free

__all__ = ["etcd_server", "postgres_server", "redis_server"]  # fixtures, used by name

TABLE_SECONDS = 30
NOW = 1_800_000_000.0


@pytest.fixture(params=TABLE_BACKENDS)
async def table(request: pytest.FixtureRequest) -> AsyncIterator[MembershipTable]:
    url = table_url(request, request.param, f"c{uuid.uuid4().hex[:12]}")
    opened = await open_table(url, timeout=10)
    assert opened is not None
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_a_join_writes_a_joining_row_and_moves_the_version_on(table: MembershipTable) -> None:
    with trio.fail_after(TABLE_SECONDS):
        empty = await table.read()
        assert empty.rows == ()
        await table.join("a:1", 100, NOW)
        after = await table.read()
    assert after.version > empty.version
    (row,) = after.rows
    assert (row.address, row.generation, row.status) == ("a:1", 100, Status.JOINING)
    assert row.alive == NOW
    assert row.votes == {}


async def test_status_moves_on_until_dead(table: MembershipTable) -> None:
    with trio.fail_after(TABLE_SECONDS):
        await table.join("a:1", 100, NOW)
        before = (await table.read()).version
        assert await table.set_status("a:1", 100, Status.ACTIVE, NOW + 1)
        after = await table.read()
        assert after.version > before
        assert after.latest()["a:1"].status is Status.ACTIVE
        assert after.latest()["a:1"].changed == NOW + 1
        assert not await table.set_status("a:1", 999, Status.ACTIVE, NOW)  # no such row
        assert await table.declare_dead("a:1", 100, after.version, NOW + 2)
        assert not await table.set_status("a:1", 100, Status.ACTIVE, NOW + 3)
        assert (await table.read()).latest()["a:1"].status is Status.DEAD


async def test_alive_changes_the_time_but_not_the_version(table: MembershipTable) -> None:
    with trio.fail_after(TABLE_SECONDS):
        await table.join("a:1", 100, NOW)
        before = await table.read()
        await table.alive("a:1", 100, NOW + 5)
        after = await table.read()
    assert after.version == before.version
    assert after.latest()["a:1"].alive == NOW + 5


async def test_votes_are_cast_renewed_and_counted_by_freshness(table: MembershipTable) -> None:
    with trio.fail_after(TABLE_SECONDS):
        await table.join("a:1", 100, NOW)
        before = (await table.read()).version
        row = await table.vote("a:1", 100, "b:1", NOW)
        assert row is not None
        assert row.votes == {"b:1": NOW}
        row = await table.vote("a:1", 100, "c:1", NOW + 10)
        row = await table.vote("a:1", 100, "b:1", NOW + 20)  # renewed
        assert row is not None
        assert row.votes == {"b:1": NOW + 20, "c:1": NOW + 10}
        assert row.fresh_votes(NOW + 21, window=5) == 1
        assert row.fresh_votes(NOW + 21, window=15) == 2
        assert await table.vote("nobody:1", 1, "b:1", NOW) is None
        after = await table.read()
    assert after.version == before
    assert after.latest()["a:1"].votes == {"b:1": NOW + 20, "c:1": NOW + 10}


async def test_exactly_one_of_many_voters_declares_a_death(table: MembershipTable) -> None:
    with trio.fail_after(TABLE_SECONDS):
        await table.join("a:1", 100, NOW)
        await table.join("b:1", 200, NOW)
        version = (await table.read()).version
        won: list[bool] = []

        async def declare() -> None:
            won.append(await table.declare_dead("a:1", 100, version, NOW + 1))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(declare)
        assert won.count(True) == 1
        latest = (await table.read()).latest()
    assert latest["a:1"].status is Status.DEAD
    assert latest["b:1"].status is Status.JOINING


async def test_a_stale_version_declares_nothing(table: MembershipTable) -> None:
    with trio.fail_after(TABLE_SECONDS):
        await table.join("a:1", 100, NOW)
        stale = (await table.read()).version
        await table.join("b:1", 200, NOW)  # the view changed meanwhile
        assert not await table.declare_dead("a:1", 100, stale, NOW)
        assert (await table.read()).latest()["a:1"].status is Status.JOINING
        assert not await table.declare_dead("zz:1", 1, (await table.read()).version, NOW)


async def test_a_new_generation_marks_the_older_ones_dead_and_keeps_them(
    table: MembershipTable,
) -> None:
    with trio.fail_after(TABLE_SECONDS):
        await table.join("a:1", 100, NOW)
        await table.set_status("a:1", 100, Status.ACTIVE, NOW)
        await table.join("a:1", 300, NOW + 1)
        found = await table.read()
    assert found.row("a:1", 100) is not None
    assert found.row("a:1", 100).status is Status.DEAD  # type: ignore[union-attr]
    assert found.latest()["a:1"].generation == 300
    assert found.latest()["a:1"].status is Status.JOINING
    assert len(found.rows) == 2  # the history stays


async def test_clusters_sharing_a_store_do_not_see_each_other(
    request: pytest.FixtureRequest, table: MembershipTable
) -> None:
    kind = request.node.callspec.params["table"]
    other = await open_table(table_url(request, kind, f"c{uuid.uuid4().hex[:12]}"), timeout=10)
    assert other is not None
    try:
        with trio.fail_after(TABLE_SECONDS):
            await table.join("a:1", 100, NOW)
            assert (await other.read()).rows == ()
    finally:
        await other.aclose()


async def test_payload_round_trip(table: MembershipTable) -> None:
    from towtruck.cluster.table import Row

    with trio.fail_after(TABLE_SECONDS):
        await table.join("[::1]:8080", 2**62, NOW)
        await table.vote("[::1]:8080", 2**62, "b:1", NOW + 0.25)
        (row,) = (await table.read()).rows
    assert row.generation == 2**62
    assert Row.from_payload(row.to_payload()) == row


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(SettingsError):
        trio.run(open_table, "zookeeper://h:1")


async def test_gossip_means_no_table() -> None:
    assert await open_table("gossip:") is None


async def test_a_table_that_is_down_answers_store_unavailable() -> None:
    from towtruck.cluster.table.memory import memory_table

    table = memory_table(f"down-{uuid.uuid4().hex}")
    table.down = True
    with pytest.raises(StoreUnavailable):
        await table.read()
    with pytest.raises(StoreUnavailable):
        await table.join("a:1", 1, NOW)
