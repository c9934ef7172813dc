"""Clustering on real nodes: Hypercorn on 127.0.0.1, HTTP between them."""

from __future__ import annotations

import itertools
from collections import Counter

import httpx
import pytest
import trio

import towtruck
from examples import chain
from tests import actors
from tests.actors import create_counter
from tests.fake_peer import FakePeer
from tests.helpers import FAST, TEST_SECONDS, owned_by, wait_until
from towtruck.cluster import placement
from towtruck.cluster.bloom import BloomFilter
from towtruck.cluster.membership import MemberState
from towtruck.cluster.router import MAX_HOPS


async def servers(http: httpx.AsyncClient, node: towtruck.Node) -> list[str]:
    return (await http.get(f"{node.url}/getservers")).json()  # type: ignore[no-any-return]


async def test_every_node_lists_every_other(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=3, **FAST) as c:
            for node in c.nodes:
                others = sorted(str(n.address) for n in c.nodes if n is not node)
                assert await servers(http, node) == others
                members = (await http.get(f"{node.url}/health")).json()["members"]
                assert members[0] == {"address": str(node.address), "state": "self"}
                assert sorted(m["address"] for m in members[1:]) == others
                assert {m["state"] for m in members[1:]} == {"alive"}


async def test_concurrent_first_calls_on_every_node_make_one_activation() -> None:
    ids = [f"first{i}" for i in range(60)]
    limits = httpx.Limits(max_connections=200)
    # 180 requests at once in this process: on a busy machine its first lanes may take
    # longer to open than FAST's failure detector allows (0.6 s).
    patient = {**FAST, "heartbeat_interval": 0.5}
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_counter, size=3, **patient) as c,
            httpx.AsyncClient(timeout=20, limits=limits) as http,
        ):
            answered: list[int] = []
            failed: list[str] = []

            async def increment(node: towtruck.Node, actor_id: str) -> None:
                response = await http.post(f"{node.url}/invoke/{actor_id}/increment")
                if response.status_code == 200:
                    answered.append(response.status_code)
                else:
                    failed.append(f"{response.status_code} {response.text}")

            async with trio.open_nursery() as nursery:
                for actor_id in ids:
                    for node in c.nodes:
                        nursery.start_soon(increment, node, actor_id)
            assert failed == []
            assert len(answered) == len(ids) * 3
            for actor_id in ids:
                assert len(c.holders(actor_id)) == 1, actor_id
                answers = [
                    (await http.get(f"{node.url}/query/{actor_id}")).json()["exists"]
                    for node in c.nodes
                ]
                assert answers.count(True) == 1
                assert await c.client.invoke(actor_id, "get") == 3
            assert sum(n.runtime.catalog.statistics().activations for n in c.nodes) == len(ids)


async def test_reentrant_calls_across_nodes(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(chain.create_actor, size=2, **FAST) as c:
            first, second = c.nodes
            (a,) = owned_by(first, c.nodes, 1, "a")
            (b,) = owned_by(second, c.nodes, 1, "b")
            answer = (await http.get(f"{second.url}/invoke/{a}/ask/{b}")).json()
            assert answer == {"answer": f"from actor {b}", "asker says": f"from actor {a}"}
            assert c.holders(a) == [first]
            assert c.holders(b) == [second]


async def test_addserver_brings_a_lone_node_and_its_peers_together(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_counter, size=2, **FAST) as c,
            towtruck.open_node(create_counter, **FAST) as lone,
        ):
            await lone.client.invoke("mine", "increment")
            response = await http.get(f"{c.nodes[0].url}/addserver/{lone.address}")
            assert response.status_code == 200, response.text
            everyone = sorted(str(n.address) for n in [*c.nodes, lone])

            async def all_joined() -> bool:
                for node in [*c.nodes, lone]:
                    others = [a for a in everyone if a != str(node.address)]
                    if await servers(http, node) != others:
                        return False
                return True

            with trio.fail_after(2):
                await wait_until(all_joined)
            # The actor stays where it was activated, whoever owns its id now.
            for node in c.nodes:
                assert (await http.get(f"{node.url}/invoke/mine/increment")).json() in (2, 3)
            assert await lone.client.invoke("mine", "get") == 3


async def test_addserver_merges_two_clusters(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_counter, size=2, **FAST) as left,
            towtruck.cluster(create_counter, size=2, **FAST) as right,
        ):
            ids = [f"m{i}" for i in range(20)]
            for actor_id in ids:
                await left.client.invoke(actor_id, "increment")
                await right.client.invoke(f"r{actor_id}", "increment")
            nodes = [*left.nodes, *right.nodes]
            response = await http.get(f"{left.nodes[0].url}/addserver/{right.nodes[1].address}")
            assert response.status_code == 200, response.text
            everyone = sorted(str(n.address) for n in nodes)

            async def all_joined() -> bool:
                for node in nodes:
                    if await servers(http, node) != [a for a in everyone if a != str(node.address)]:
                        return False
                return True

            with trio.fail_after(5):
                await wait_until(all_joined)
            # Every actor kept its one activation and its state, wherever it is asked for.
            for n, actor_id in enumerate([*ids, *(f"r{i}" for i in ids)]):
                node = nodes[n % len(nodes)]
                assert (await http.get(f"{node.url}/invoke/{actor_id}/increment")).json() == 2
            for actor_id in [*ids, *(f"r{i}" for i in ids)]:
                holders = [n for n in nodes if actor_id in n.runtime.catalog]
                assert len(holders) == 1, actor_id


@pytest.mark.parametrize(
    "address", ["not-a-host", "host:http", "host:0", "host:70000", "[::1", "a b:80", "SELF"]
)
async def test_bad_addresses_are_400(http: httpx.AsyncClient, address: str) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **FAST) as node:
            address = str(node.address) if address == "SELF" else address
            for route in ("addserver", "removeserver"):
                response = await http.get(f"{node.url}/{route}/{address}")
                assert response.status_code == 400, response.text
                assert response.json()["error"]["type"] == "InvalidAddress"
            assert (await http.get(f"{node.url}/ping")).status_code == 200


async def test_addserver_of_a_node_that_does_not_answer_is_503(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **FAST) as node:
            with trio.socket.socket() as unused:
                await unused.bind(("127.0.0.1", 0))
                port = unused.getsockname()[1]
            response = await http.get(f"{node.url}/addserver/127.0.0.1:{port}")
            assert response.status_code == 503
            assert response.json()["error"]["type"] == "PeerUnavailable"
            assert await servers(http, node) == []


async def test_another_name_of_a_node_adds_no_member(http: httpx.AsyncClient) -> None:
    """``localhost:port`` for ``127.0.0.1:port``: one node, one name, or placement would
    count it twice."""
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            alias = f"localhost:{second.address.port}"
            response = await http.get(f"{first.url}/addserver/{alias}")
            assert response.status_code == 200, response.text
            assert await servers(http, first) == [str(second.address)]
            response = await http.get(f"{first.url}/addserver/localhost:{first.address.port}")
            assert response.status_code == 400, response.text
            assert response.json()["error"]["type"] == "InvalidAddress"
            assert await servers(http, first) == [str(second.address)]


async def test_a_seed_given_by_another_name_joins_under_its_own(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **FAST) as first:
            seed = f"localhost:{first.address.port}"
            async with towtruck.open_node(create_counter, peers=[seed], **FAST) as second:

                async def joined() -> bool:
                    return await servers(http, first) == [str(second.address)] and await servers(
                        http, second
                    ) == [str(first.address)]

                await wait_until(joined)
                health = (await http.get(f"{second.url}/health")).json()
                states = {m["address"]: m["state"] for m in health["members"]}
                assert states[str(first.address)] == "alive"
                assert states.get(seed) in (None, "removed")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'"members"',
        b'{"members": 5}',
        b'{"members": [5, null, "x", {"address": 1}, {"address": "a b:1"}]}',
        b'{"members": [{"address": "10.0.0.9:1", "joined": "yes", "version": 1}]}',
        b'{"members": [{"address": "10.0.0.9:1", "joined": true, "version": 1e3}]}',
        b'{"members": [{"address": "10.0.0.9:1", "joined": true, "version": 99999999999999999999}]}',
        b'{"members": [{"address": "10.0.0.9:1", "joined": true, "version": -1}]}',
    ],
)
async def test_a_malformed_heartbeat_changes_nothing(http: httpx.AsyncClient, body: bytes) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            response = await http.post(f"{first.url}/cluster/heartbeat", content=body)
            assert response.status_code in (200, 400), response.text
            assert "error" in response.json() or response.json()["from"] == str(first.address)
            assert await servers(http, first) == [str(second.address)]
            assert await first.client.invoke("after", "increment") == 1


async def test_removeserver_takes_a_node_out_everywhere(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=3, **FAST) as c:
            a, b, gone = c.nodes
            response = await http.get(f"{a.url}/removeserver/{gone.address}")
            assert response.json() == [str(b.address)]

            async def spread() -> bool:
                return (
                    await servers(http, b) == [str(a.address)] and await servers(http, gone) == []
                )

            with trio.fail_after(2):
                await wait_until(spread)
            for i in range(30):
                assert (await http.post(f"{a.url}/invoke/r{i}/increment")).status_code == 200
                assert (await http.post(f"{b.url}/invoke/r{i}/increment")).json() == 2
                assert gone not in c.holders(f"r{i}")
            response = await http.get(f"{a.url}/removeserver/{gone.address}")
            assert response.status_code == 404


async def test_a_forwarding_loop_is_cut_with_508(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            (elsewhere,) = owned_by(second, c.nodes, 1, "loop")
            envelope = {
                "id": elsewhere,
                "method": "get",
                "data": None,
                "chain": [],
                "timeout": 5,
                "hops": MAX_HOPS,
                "existing": False,
            }
            response = await http.post(f"{first.url}/cluster/forward", json=envelope)
            assert response.status_code == 508
            assert response.json()["error"]["type"] == "ForwardingLoop"
            response = await http.post(f"{first.url}/cluster/forward", json={"id": "x"})
            assert response.status_code == 400


async def test_killing_a_node_under_load(http: httpx.AsyncClient) -> None:
    settings = {**FAST, "call_timeout": 5}
    limits = httpx.Limits(max_connections=50)
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_counter, size=3, **settings) as c,
            httpx.AsyncClient(timeout=10, limits=limits) as client,
        ):
            *survivors, victim = c.nodes
            ids = [f"k{i}" for i in range(90)]
            for actor_id in ids:
                await c.client.invoke(actor_id, "increment")
            victims_ids = [i for i in ids if c.holders(i) == [victim]]
            assert victims_ids
            outcomes: Counter[str] = Counter()
            stop = trio.Event()

            async def load(worker: int) -> None:
                for turn in itertools.count():
                    if stop.is_set():
                        return
                    node = survivors[(worker + turn) % 2]
                    response = await client.post(
                        f"{node.url}/invoke/{ids[(worker * 7 + turn) % len(ids)]}/increment"
                    )
                    error = response.json()["error"]["type"] if response.status_code != 200 else ""
                    outcomes[f"{response.status_code} {error}".strip()] += 1

            async def victims_actors_answer() -> bool:
                for actor_id in victims_ids:
                    response = await client.post(f"{survivors[0].url}/invoke/{actor_id}/increment")
                    if response.status_code != 200:
                        return False
                return True

            async with trio.open_nursery() as nursery:
                for worker in range(8):
                    nursery.start_soon(load, worker)
                with trio.fail_after(20):
                    await wait_until(lambda: _at_least(outcomes, 100))
                c.kill(victim)
                killed, served = sum(outcomes.values()), outcomes["200"]
                # The bound, from the kill, while the load goes on.
                with trio.fail_after(0.2 * 3 + 1):
                    await wait_until(victims_actors_answer)
                with trio.fail_after(30):
                    await wait_until(lambda: _at_least(outcomes, killed + 300))
                stop.set()
            # Every call completed; the only failures are the victim's calls in flight
            # (answered NodeStopping as it went down, or cut with it), a few at most.
            documented = {"200", "502 CallInterrupted", "503 PeerUnavailable", "503 NodeStopping"}
            assert set(outcomes) <= documented, outcomes
            assert outcomes["200"] - served >= 250, outcomes
            for actor_id in victims_ids:
                assert len(c.holders(actor_id)) == 1


async def _at_least(outcomes: Counter[str], count: int) -> bool:
    return sum(outcomes.values()) >= count


async def test_a_node_joining_under_load_makes_no_duplicate_and_loses_nothing() -> None:
    limits = httpx.Limits(max_connections=50)
    ids = [f"j{i}" for i in range(80)]
    successes: Counter[str] = Counter()
    failures: list[str] = []
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(create_counter, size=2, **FAST) as c,
            httpx.AsyncClient(timeout=10, limits=limits) as client,
        ):
            joined = trio.Event()
            stop = trio.Event()

            async def load(worker: int) -> None:
                for turn in itertools.count():
                    if stop.is_set():
                        return
                    live = c.live
                    node = live[(worker + turn) % len(live)]
                    # Half the ids are first called while the new node joins.
                    pool = ids if joined.is_set() else ids[: len(ids) // 2]
                    actor_id = pool[(worker * 13 + turn) % len(pool)]
                    response = await client.post(f"{node.url}/invoke/{actor_id}/increment")
                    if response.status_code == 200:
                        successes[actor_id] += 1
                    else:
                        failures.append(response.text)

            async with trio.open_nursery() as nursery:
                for worker in range(8):
                    nursery.start_soon(load, worker)
                with trio.fail_after(20):
                    await wait_until(lambda: _at_least(successes, 300))
                joined.set()
                await c.add_node()
                before = sum(successes.values())
                with trio.fail_after(30):
                    await wait_until(lambda: _at_least(successes, before + 600))
                stop.set()
            assert failures == []
            for actor_id in ids:
                holders = c.holders(actor_id)
                assert len(holders) == 1, (actor_id, holders)
                assert await c.client.invoke(actor_id, "get") == successes[actor_id], actor_id
            assert sum(n.runtime.catalog.statistics().activations for n in c.nodes) == len(ids)
            assert any(c.holders(i) == [c.nodes[2]] for i in ids), "the new node owns some"


async def test_bloom_routes(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            mine = owned_by(first, c.nodes, 5, "bloom")
            for actor_id in mine:
                await first.client.invoke(actor_id, "increment")
            payload = (await http.get(f"{first.url}/getbloom?fresh=1")).json()
            bloom = BloomFilter.from_payload(payload)
            assert all(actor_id in bloom for actor_id in mine)
            assert bloom.count == 5
            again = (await http.get(f"{first.url}/getbloom?since={bloom.version}")).json()
            assert again == {"unchanged": True}
            updated = (await http.get(f"{second.url}/updateblooms")).json()
            assert updated == {"updated": [str(first.address)]}
            assert second.router.directory.filters[str(first.address)].count == 5


async def test_the_cluster_helper(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        # Two left, one killed: with keep-majority the survivor goes on only if it has
        # the lower address (see test_simulation for that); here, the helper itself.
        async with towtruck.cluster(create_counter, size=2, partition="serve", **FAST) as c:
            assert len(c.nodes) == 2
            assert await c.client.invoke("h", "increment") == 1
            assert await c.client.invoke("h", "increment") == 2
            third = await c.add_node()
            assert len(c.live) == 3
            await c.stop(c.nodes[0])
            assert c.nodes[0] not in c.live
            c.kill(third)
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{third.url}/ping")

            survivor = c.nodes[1]

            async def third_is_down() -> bool:
                members = (await http.get(f"{survivor.url}/health")).json()["members"]
                return {"address": str(third.address), "state": "down"} in members

            with trio.fail_after(0.2 * 3 + 1):
                await wait_until(third_is_down)
            assert await servers(http, survivor) == [str(third.address)], "down, not removed"
            for i in range(10):
                assert await c.client.invoke(f"after{i}", "increment") == 1


async def test_a_peer_taken_for_down_while_alive_keeps_its_actors(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **FAST) as c:
            first, second = c.nodes
            ids = owned_by(second, c.nodes, 20, "slow")
            for actor_id in ids:
                await first.client.invoke(actor_id, "increment")
            await first.router.gossip.refresh_filters()
            # As if second were too loaded to answer heartbeats: first takes it for down
            # and owns its ids, but must find the actors where they are.
            first.router.membership.missed(str(second.address), certain=True)
            for actor_id in ids:
                response = await http.post(f"{first.url}/invoke/{actor_id}/increment")
                assert response.json() == 2, actor_id
                assert c.holders(actor_id) == [second]


class SlowToLeave(actors.Counter):
    async def deactivate(self) -> None:
        await trio.sleep(0.5)  # saving its state, say: the node drains meanwhile


async def test_a_node_leaving_sends_calls_on_and_refuses_none() -> None:
    statuses: Counter[int] = Counter()
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.cluster(SlowToLeave, size=3, **FAST) as c,
            httpx.AsyncClient(timeout=10) as client,
        ):
            leaving = c.nodes[0]
            ids = [f"leave{i}" for i in range(30)]
            for actor_id in ids:
                await leaving.client.invoke(actor_id, "increment")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(c.stop, leaving)
                for turn in itertools.count():
                    try:
                        response = await client.post(
                            f"{leaving.url}/invoke/{ids[turn % len(ids)]}/increment"
                        )
                    except httpx.TransportError:
                        break  # its server has closed: it is gone
                    statuses[response.status_code] += 1
            assert not any(leaving in c.holders(i) for i in ids)
    assert set(statuses) == {200}, statuses  # a lone node would have answered 503s


async def test_an_error_a_peer_relays_about_another_never_takes_the_relay_out() -> None:
    """A, B, C; B dies; A already knows, C not yet. A call A sends to C fails at C
    (C cannot reach B): that says nothing about C, which must stay in A's placement."""
    slow = {**FAST, "heartbeat_interval": 30}  # no node notices B on its own here
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=3, **slow) as c:
            a, b, relay = c.nodes
            names = [str(n.address) for n in c.nodes]
            ids = [
                i
                for i in (f"relay{n}" for n in range(2000))
                if placement.owner(i, names) == names[1]
                and placement.owner(i, [names[0], names[2]]) == names[2]
            ][:3]
            c.kill(b)
            a.router.membership.missed(names[1], certain=True)
            with pytest.raises(towtruck.PeerUnavailable) as caught:
                await a.client.invoke(ids[0], "increment")
            assert caught.value.details["peer"] == names[1]
            assert a.router.membership.state(names[2]) is MemberState.ALIVE
            assert a.router.membership.placement() == tuple(sorted([names[0], names[2]]))
            # C has since seen B refuse it: the ids it now owns are served there.
            for actor_id in ids:
                assert await a.client.invoke(actor_id, "increment") == 1
                assert c.holders(actor_id) == [relay]


async def test_a_node_removed_then_added_back_keeps_one_activation_of_each_actor(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=3, **FAST) as c:
            a, b, gone = c.nodes
            assert (await http.get(f"{a.url}/removeserver/{gone.address}")).status_code == 200

            async def apart() -> bool:
                return await servers(http, gone) == [] and await servers(http, b) == [
                    str(a.address)
                ]

            await wait_until(apart)
            # Apart, each side activates the same ids: the removed node serves alone.
            ids = [f"back{i}" for i in range(40)]
            for actor_id in ids:
                for node in (a, gone):
                    response = await http.post(f"{node.url}/invoke/{actor_id}/increment")
                    assert response.json() == 1, response.text
            assert all(len(c.holders(actor_id)) == 2 for actor_id in ids)
            assert (await http.get(f"{a.url}/addserver/{gone.address}")).status_code == 200

            async def one_each() -> bool:
                return all(len(c.holders(actor_id)) == 1 for actor_id in ids)

            with trio.fail_after(5):
                await wait_until(one_each)
            for n, actor_id in enumerate(ids):
                node = c.nodes[n % 3]
                response = await http.post(f"{node.url}/invoke/{actor_id}/increment")
                assert response.json() == 2, (actor_id, response.text)
                assert len(c.holders(actor_id)) == 1


async def test_a_peer_announcing_itself_anew_on_every_heartbeat_holds_up_nothing(
    http: httpx.AsyncClient,
) -> None:
    """It answers every heartbeat with its own record at a version newer than any it
    was sent: nodes must neither settle for ever nor let it undo its removal."""
    fake = FakePeer(records=lambda peer: [peer.record(version=peer.newest + 1)])
    with trio.fail_after(TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            async with towtruck.open_node(create_counter, call_timeout=5, **FAST) as node:
                response = await http.get(f"{node.url}/addserver/{fake.address}")
                assert response.status_code == 200, response.text
                heartbeats = fake.heartbeats
                mine = [
                    i
                    for i in (f"new{n}" for n in range(100))
                    if node.router.membership.owner(i) == node.router.me
                ]
                for actor_id in mine[:20]:  # each is a new activation
                    response = await http.post(f"{node.url}/invoke/{actor_id}/increment")
                    assert response.status_code == 200, response.text

                async def heartbeats_went_on() -> bool:
                    return fake.heartbeats >= heartbeats + 3

                await wait_until(heartbeats_went_on)
                assert node.router.gossip._settled.is_set()
                response = await http.get(f"{node.url}/removeserver/{fake.address}")
                assert response.status_code == 200, response.text
                assert await servers(http, node) == []
                assert node.router.membership.state(fake.address) is MemberState.REMOVED
            nursery.cancel_scope.cancel()


async def test_a_node_whose_key_every_peer_refuses_does_not_start_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(
            create_counter, cluster_key="the cluster's own key", **FAST
        ) as keyed:
            for key in (None, "another key, as long"):
                with pytest.RaisesGroup(
                    pytest.RaisesExc(towtruck.SettingsError, match="--cluster-key: every peer"),
                    flatten_subgroups=True,
                ):
                    async with towtruck.open_node(
                        create_counter, cluster_key=key, peers=[str(keyed.address)], **FAST
                    ):
                        pytest.fail("it serves as a cluster of its own")
            assert await servers_of(keyed) == []
    logged = caplog.text
    assert f"{keyed.address} refused this node's cluster key (401 Unauthorized" in logged
    assert f"{keyed.address} refused this node's cluster key (403 Forbidden" in logged
    assert "refused a request for the cluster from 127.0.0.1 (/cluster/heartbeat)" in logged


async def servers_of(node: towtruck.Node) -> list[str]:
    return node.router.membership.peers()
