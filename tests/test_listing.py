"""``GET /actors``: the actors in memory, a page at a time, on one node or the whole
cluster; ``GET /actors/{id}`` from any node."""

from __future__ import annotations

import time

import httpx
import trio

import towtruck
from examples import account, greeter
from tests.actors import create_counter
from tests.helpers import FAST, TEST_SECONDS, owned_by
from towtruck.cluster.wire import CLUSTER_KEY_HEADER


async def test_pages_of_one_node_in_order_of_id(http: httpx.AsyncClient) -> None:
    before = time.time() * 1000
    async with towtruck.open_node(create_counter) as node:
        for i in range(7):
            await http.post(f"{node.url}/invoke/p{i}/increment")
        await http.post(f"{node.url}/invoke/p3/increment")
        seen, after = [], None
        while True:
            params = {"limit": "3", **({"after": after} if after else {})}
            page = (await http.get(f"{node.url}/actors", params=params)).json()
            assert page["total"] == 7
            assert len(page["actors"]) <= 3
            seen += page["actors"]
            after = page["next"]
            if after is None:
                break
    assert [a["id"] for a in seen] == [f"p{i}" for i in range(7)]
    p3 = seen[3]
    assert p3["calls"] == 2
    assert p3["errors"] == 0
    assert p3["queued"] == 0
    assert p3["state"] == "valid"
    assert p3["node"] == str(node.address)
    assert before - 1000 <= p3["activated"] <= p3["last_call"] <= time.time() * 1000 + 1000


async def test_an_actor_is_found_from_any_node_and_listed_cluster_wide(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(greeter.create_actor, size=3, **FAST) as c:
            a, b, _ = c.nodes
            on_b = owned_by(b, c.nodes, 2, "b")
            for actor_id in on_b:
                assert (await http.get(f"{a.url}/invoke/{actor_id}/hello")).status_code == 200
            for actor_id in ("x1", "x2", "x3", "x4"):
                await http.get(f"{a.url}/invoke/{actor_id}/hello")

            found = (await http.get(f"{a.url}/actors/{on_b[0]}")).json()
            assert found["node"] == str(b.address)
            assert found["calls"] == 1
            # ``here``: this node only.
            here = await http.get(f"{a.url}/actors/{on_b[0]}", params={"here": "1"})
            assert here.status_code == 404
            assert here.json()["error"]["type"] == "NotActive"
            missing = await http.get(f"{a.url}/actors/nobody")
            assert missing.status_code == 404

            listed, after = [], None
            while True:
                params = {"cluster": "1", "limit": "4", **({"after": after} if after else {})}
                page = (await http.get(f"{a.url}/actors", params=params)).json()
                assert page["total"] == 6
                assert sorted(page["nodes"]) == sorted(str(n.address) for n in c.nodes)
                listed += page["actors"]
                after = page["next"]
                if after is None:
                    break
            assert [x["id"] for x in listed] == sorted([*on_b, "x1", "x2", "x3", "x4"])
            assert {x["node"] for x in listed if x["id"] in on_b} == {str(b.address)}


async def test_a_peer_with_more_actors_than_a_page_is_paged_through(
    http: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(greeter.create_actor, size=2, **FAST) as c:
            a, b = c.nodes
            on_b = owned_by(b, c.nodes, 5, "b")
            for actor_id in on_b:
                assert (await http.get(f"{b.url}/invoke/{actor_id}/hello")).status_code == 200
            listed, after = [], None
            while True:  # a page of 2 from the node that holds none of them
                params = {"cluster": "1", "limit": "2", **({"after": after} if after else {})}
                page = (await http.get(f"{a.url}/actors", params=params)).json()
                listed += page["actors"]
                after = page["next"]
                if after is None:
                    break
            assert [x["id"] for x in listed] == sorted(on_b)


async def test_bad_pages_are_refused_with_json(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(greeter.create_actor) as node:
        for limit in ("0", "1001", "many"):
            response = await http.get(f"{node.url}/actors", params={"limit": limit})
            assert response.status_code == 400
            assert response.json()["error"]["type"] == "BadRequest"


async def test_listing_needs_the_cluster_key_when_one_is_set(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(greeter.create_actor, cluster_key="k" * 32) as node:
        await http.get(f"{node.url}/invoke/1/hello")
        assert (await http.get(f"{node.url}/actors")).status_code == 401
        assert (await http.get(f"{node.url}/actors/1")).status_code == 401
        keyed = await http.get(f"{node.url}/actors", headers={CLUSTER_KEY_HEADER: "k" * 32})
        assert keyed.status_code == 200, keyed.text
        assert [a["id"] for a in keyed.json()["actors"]] == ["1"]


async def test_an_actor_with_state_shows_its_epoch_and_timers(http: httpx.AsyncClient) -> None:
    async with towtruck.open_node(account.create_actor, state_store="memory:") as node:
        await http.post(f"{node.url}/invoke/acc/deposit", json={"amount": 1})
        found = (await http.get(f"{node.url}/actors/acc")).json()
    assert found["epoch"] == 1
    assert found["timers"] == []
