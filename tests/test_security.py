"""The cluster key: only the nodes of a cluster may read or change it."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio

import towtruck
from tests.actors import create_counter
from tests.helpers import FAST, TEST_SECONDS, owned_by

KEY = "correct horse battery staple"
KEYED = {**FAST, "cluster_key": KEY}
PROTECTED = [
    ("GET", "/addserver/127.0.0.1:1"),
    ("GET", "/removeserver/127.0.0.1:1"),
    ("GET", "/getbloom"),
    ("GET", "/updateblooms"),
    ("GET", "/rungc"),
    ("POST", "/cluster/heartbeat"),
    ("POST", "/cluster/forward"),
]


@pytest.mark.parametrize(("verb", "path"), PROTECTED)
async def test_cluster_routes_need_the_key(http: httpx.AsyncClient, verb: str, path: str) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **KEYED) as node:
            url = node.url + path
            missing = await http.request(verb, url, content=b"{}")
            wrong = await http.request(
                verb, url, content=b"{}", headers={"towtruck-cluster-key": "x" * 20}
            )
            public = await http.get(f"{node.url}/invoke/1/increment")
    assert (missing.status_code, missing.json()["error"]["type"]) == (401, "Unauthorized")
    assert (wrong.status_code, wrong.json()["error"]["type"]) == (403, "Forbidden")
    assert public.status_code == 200


@pytest.mark.parametrize(
    ("key", "answer"),
    [(b"", b"HTTP/1.1 401"), (b"towtruck-cluster-key: " + b"x" * 20 + b"\r\n", b"HTTP/1.1 403")],
    ids=["missing", "wrong"],
)
async def test_a_lane_needs_the_key(key: bytes, answer: bytes) -> None:
    request = (
        b"GET /cluster/lane HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\n"
        b"upgrade: towtruck-lane\r\n" + key + b"\r\n"
    )
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **KEYED) as node:
            stream = await trio.open_tcp_stream(node.address.host, node.address.port)
            async with stream:
                await stream.send_all(request)
                received = await stream.receive_some()
    assert received.startswith(answer), received


async def test_nodes_sharing_the_key_make_a_cluster(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.cluster(create_counter, size=2, **KEYED) as c:
            first, second = c.nodes
            for actor_id in owned_by(second, c.nodes, 5, "k"):
                assert (await http.post(f"{first.url}/invoke/{actor_id}/increment")).json() == 1
                assert c.holders(actor_id) == [second]
            assert (await http.get(f"{first.url}/getservers")).json() == [str(second.address)]


async def test_a_node_with_another_key_cannot_join(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with (
            towtruck.open_node(create_counter, **KEYED) as keyed,
            towtruck.open_node(create_counter, **{**FAST, "cluster_key": "y" * 20}) as other,
        ):
            response = await http.get(
                f"{other.url}/addserver/{keyed.address}", headers={"towtruck-cluster-key": "y" * 20}
            )
            assert (response.status_code, response.json()["error"]["type"]) == (403, "Forbidden")
            assert (await http.get(f"{keyed.url}/getservers")).json() == []


@pytest.mark.parametrize(
    ("where", "warned"),
    [
        ({"host": "0.0.0.0"}, True),
        ({"host": "0.0.0.0", "advertise": "127.0.0.1:9"}, True),  # bound beyond it all the same
        ({"host": "127.0.0.1", "advertise": "10.1.2.3:9"}, True),
        ({"host": "127.0.0.1"}, False),
    ],
)
async def test_serving_beyond_loopback_without_a_key_warns(
    caplog: pytest.LogCaptureFixture, where: dict[str, str], warned: bool
) -> None:
    with trio.fail_after(TEST_SECONDS):
        async with towtruck.open_node(create_counter, **where, **FAST):
            pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no cluster key" in r.getMessage() for r in warnings) == warned


def test_the_key_never_shows_in_settings_repr() -> None:
    assert KEY not in repr(towtruck.Settings(cluster_key=KEY))


def test_short_keys_are_refused() -> None:
    with pytest.raises(towtruck.SettingsError, match="cluster_key: expected at least 16"):
        towtruck.Settings(cluster_key="short")
