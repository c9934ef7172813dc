"""The directory: which peers may hold an actor, as their bloom filters tell, on real nodes."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio

import towtruck
from tests.actors import create_counter
from tests.helpers import FAST, TEST_SECONDS, owned_by, wait_until
from towtruck.cluster.bloom import MIN_CAPACITY


async def test_filters_spare_peers_the_queries_for_ids_they_do_not_hold() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=3, **FAST) as c:
            first, second, _ = c.nodes
            held = owned_by(second, c.nodes, 1, "held")[0]
            await second.client.invoke(held, "increment")  # active on the second node
            assert sorted(await first.router.gossip.refresh_filters()) == sorted(
                str(n.address) for n in c.nodes[1:]
            )
            peers = first.router.directory._peers  # type: ignore[attr-defined]
            asked: list[tuple[str, str]] = []
            get = peers.get

            async def counting_get(peer: str, path: str) -> Any:
                if path.startswith("/query/"):
                    asked.append((peer, path))
                return await get(peer, path)

            peers.get = counting_get
            # 200 new ids owned by the first node: each is activated there, and a peer
            # is asked only when its filter says it may hold the id (1% false positives).
            for actor_id in owned_by(first, c.nodes, 200, "new"):
                assert await first.client.invoke(actor_id, "increment") == 1
            assert len(asked) <= 20, asked
            # An id a peer's filter holds is asked about, and found there.
            assert await first.router.directory.locate(held, trio.current_time() + 5) == str(
                second.address
            )
            assert (str(second.address), f"/query/{held}") in asked


async def test_filters_are_pulled_every_bloom_interval_and_resized_to_the_actors() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, max_actors=5000, **FAST) as c:
            first, second = c.nodes
            ids = [f"many{i}" for i in range(2 * MIN_CAPACITY)]
            for actor_id in ids:
                await second.runtime.catalog.invoke(actor_id, "increment", None, _context())

            async def grown_and_pulled() -> bool:
                # No /updateblooms here: the second node resizes its own filter, and the
                # first pulls it, each on its own every bloom_interval.
                seen = first.router.directory.filters.get(str(second.address))
                return (
                    second.router.directory.bloom.capacity >= len(ids)
                    and seen is not None
                    and all(actor_id in seen for actor_id in ids)
                )

            with trio.fail_after(10):
                await wait_until(grown_and_pulled)
            for actor_id in ids:
                second.runtime.catalog.get(actor_id).request_deactivation(  # type: ignore[union-attr]
                    towtruck.activation.DeactivationReason.IDLE
                )

            async def shrunk() -> bool:
                return second.router.directory.bloom.capacity == MIN_CAPACITY

            with trio.fail_after(10):
                await wait_until(shrunk)


def _context() -> towtruck.calls.CallContext:
    return towtruck.calls.CallContext((), trio.current_time() + 30)


async def test_after_a_stall_a_node_gives_up_the_actors_a_peer_holds_too() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            # Two activations of "twice", as a stall leaves them (made here by hand).
            for node in (first, second):
                await node.runtime.catalog.invoke("twice", "increment", None, _context())
            await first.runtime.catalog.invoke("once", "increment", None, _context())
            await first.router.gossip.refresh_filters()
            assert await first.router.directory.duplicates() == ["twice"]
            await first.router.gossip._give_up_duplicates()  # what waking from a stall runs

            async def given_up() -> bool:
                return "twice" not in first.runtime.catalog

            with trio.fail_after(5):
                await wait_until(given_up)
            assert "twice" in second.runtime.catalog
            assert "once" in first.runtime.catalog


async def test_a_live_peer_silent_about_an_id_keeps_it_from_activating() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, query_timeout=0.5, **FAST) as c:
            first, second = c.nodes
            held = owned_by(first, c.nodes, 1, "held")[0]
            await second.runtime.catalog.invoke(held, "increment", None, _context())
            await first.router.gossip.refresh_filters()
            peers = first.router.directory._peers  # type: ignore[attr-defined]
            get = peers.get

            async def slow_queries(peer: str, path: str) -> Any:
                if path.startswith("/query/"):
                    await trio.sleep_forever()  # alive, and slower than query_timeout
                return await get(peer, path)

            peers.get = slow_queries
            # Taking its silence for "no" would activate a second copy on the first node.
            with pytest.raises(towtruck.PeerUnavailable, match="did not say within"):
                await first.client.invoke(held, "increment")
            assert held not in first.runtime.catalog
            peers.get = get
            assert await first.client.invoke(held, "increment") == 2  # the one copy


async def test_a_peer_that_leaves_right_after_activating_is_asked_before_its_ids_move() -> None:
    with trio.fail_after(TEST_SECONDS):
        settings = {**FAST, "bloom_interval": 600}  # fetched when membership changes only
        async with towtruck.cluster(create_counter, size=2, **settings) as c:
            first, second = c.nodes
            directory = first.router.directory
            await first.router.gossip.refresh_filters()
            assert directory.filters[str(second.address)].count == 0
            moving = owned_by(second, c.nodes, 1, "moving")[0]
            await second.client.invoke(moving, "increment")
            # It leaves (a graceful stop's first step) before its filter, which now
            # holds the actor, is fetched again; the actor moves to the first node.
            await second.router.gossip.leave()

            async def settled() -> bool:
                return first.router.membership.placement() == (str(first.address),) and (
                    first.router.gossip.settled
                )

            await wait_until(settled)
            # Taking the empty filter it last fetched at its word, the first node would
            # activate a second copy, and one of the two would lose its updates.
            assert await first.client.invoke(moving, "increment") == 2
            assert moving not in first.runtime.catalog


async def test_a_peer_heard_to_have_left_is_asked_until_its_filter_is_fetched_again() -> None:
    with trio.fail_after(TEST_SECONDS):
        settings = {**FAST, "bloom_interval": 600}  # fetched when membership changes only
        async with towtruck.cluster(create_counter, size=2, **settings) as c:
            first, second = c.nodes
            peer = str(second.address)
            directory = first.router.directory
            await first.router.gossip.refresh_filters()
            assert directory.filters[peer].count == 0
            moving = owned_by(second, c.nodes, 1, "moving")[0]
            await second.client.invoke(moving, "increment")
            # Its leave is heard from a third node, before its heartbeat says its filter
            # moved on, and the periodic refresh runs before settling does: taking the
            # empty filter it holds at its word, it would drop the peer, and nothing
            # after would ask it about the actor it activated meanwhile.
            directory._stale.discard(peer)  # type: ignore[attr-defined]
            first.router.membership.remove(peer)
            await directory.refresh()
            assert await directory.locate(moving, trio.current_time() + 5) == peer


async def test_a_peer_that_left_and_stays_silent_is_asked_no_longer_than_a_down_one() -> None:
    with trio.fail_after(TEST_SECONDS):
        settings = {**FAST, "bloom_interval": 600, "query_timeout": 0.3, "suspicion": 1.0}
        async with towtruck.cluster(create_counter, size=2, **settings) as c:
            first, second = c.nodes
            peer = str(second.address)
            directory = first.router.directory
            peers = directory._peers  # type: ignore[attr-defined]
            get = peers.get

            async def silent(address: str, path: str) -> Any:
                if address == peer:
                    await trio.sleep_forever()
                return await get(address, path)

            peers.get = silent
            first.router.membership.remove(peer)
            await directory.refresh()  # its filter cannot be fetched: asked about every id
            with pytest.raises(towtruck.errors.PeerUnavailable):  # (keep-majority)
                await directory.locate("anyone", trio.current_time() + 5)

            async def given_up() -> bool:
                return peer not in directory.holders()

            await wait_until(given_up)  # once it has been silent for the suspicion time
            assert first.router.membership.removed_for(peer) >= 1.0
            assert await directory.locate("anyone", trio.current_time() + 5) is None
            peers.get = get


async def test_a_filter_dropped_while_it_was_fetched_again_breaks_nothing() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            peer = str(second.address)
            directory = first.router.directory
            await first.router.gossip.refresh_filters()
            peers = directory._peers  # type: ignore[attr-defined]
            get, asked, answer = peers.get, trio.Event(), trio.Event()

            async def held_up(address: str, path: str) -> Any:
                if path.startswith("/getbloom"):
                    asked.set()
                    await answer.wait()
                return await get(address, path)

            peers.get = held_up
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(directory.refresh, fresh=True, only=[peer]))
                await asked.wait()
                # Dropped meanwhile, as a refresh that took the peer for no holder does;
                # the fetch's answer is "unchanged" since the version it asked from.
                del directory.filters[peer]
                answer.set()
            peers.get = get
            assert peer in directory.filters


async def test_a_peer_whose_filter_was_not_fetched_fresh_is_asked_about_every_id() -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, query_timeout=0.5, **FAST) as c:
            first, second = c.nodes
            directory = first.router.directory
            await first.router.gossip.refresh_filters()
            held = owned_by(first, c.nodes, 1, "held")[0]
            # Active on the second node since the first last fetched its filter.
            await second.runtime.catalog.invoke(held, "increment", None, _context())
            peers = directory._peers  # type: ignore[attr-defined]
            get = peers.get

            async def no_filters(peer: str, path: str) -> Any:
                if path.startswith("/getbloom"):
                    await trio.sleep_forever()
                return await get(peer, path)

            peers.get = no_filters
            await directory.refresh(fresh=True)  # as settling a change of membership does
            assert held not in directory.filters[str(second.address)]  # the one held is old
            assert await directory.locate(held, trio.current_time() + 5) == str(second.address)
