"""Limits that keep a node serving under hostile or heavy input, each with a clear error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing

import towtruck
from tests.actors import create_counter, create_recorder
from tests.helpers import NETWORK_TEST_SECONDS, until_closed, wait_until


@pytest.mark.parametrize(
    ("path", "status", "type_"),
    [
        ("/invoke/1/echo" + "/x" * 64, 200, None),
        ("/invoke/1/echo" + "/x" * 65, 400, "BadRequest"),
        ("/invoke/1/" + "m" * 128, 404, "MethodNotFound"),
        ("/invoke/1/" + "m" * 129, 400, "BadRequest"),
        ("/invoke/1/" + "%C3%A9" * 128, 404, "MethodNotFound"),  # characters, not bytes
        ("/invoke/1/" + "%C3%A9" * 129, 400, "BadRequest"),
        ("/invoke/" + "i" * 256 + "/echo", 200, None),
        ("/invoke/" + "i" * 257 + "/echo", 400, "InvalidActorId"),
    ],
)
async def test_path_limits(
    http: httpx.AsyncClient, path: str, status: int, type_: str | None
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder) as node:
            response = await http.get(node.url + path)
    assert response.status_code == status, response.text
    if type_ is not None:
        assert response.json()["error"]["type"] == type_


async def test_headers_over_the_limit_get_431_in_json() -> None:
    request = b"GET /invoke/1/get HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n"
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_counter) as node:
            received = await until_closed(node, request)
            assert (
                await until_closed(
                    node, b"GET /ping HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
                )
            ).startswith(b"HTTP/1.1 200")
    assert received.startswith(b"HTTP/1.1 431")
    assert b'"type":"HeadersTooLarge"' in received


async def test_a_client_that_stalls_in_its_body_is_cut_off_and_others_are_served(
    http: httpx.AsyncClient,
) -> None:
    head = b"POST /invoke/1/increment HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{"
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            towtruck.open_node(create_counter, request_timeout=0.3) as node,
            await trio.open_tcp_stream(node.address.host, node.address.port) as slow,
        ):
            await slow.send_all(head)
            assert (await http.post(f"{node.url}/invoke/2/increment")).json() == 1
            while await slow.receive_some():  # ends when the node closes it
                pass


async def test_a_client_that_trickles_its_head_is_cut_off_and_others_are_served(
    http: httpx.AsyncClient,
) -> None:
    started = trio.Event()

    async def trickle(stream: trio.SocketStream) -> None:
        for byte in b"GET /invoke/1/get HTTP/1.1\r\nhost: t\r\n" * 4:
            await stream.send_all(bytes([byte]))
            started.set()
            await trio.sleep(0.05)  # the trickle itself is what is tested

    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            towtruck.open_node(create_counter, keep_alive_timeout=0.3) as node,
            await trio.open_tcp_stream(node.address.host, node.address.port) as slow,
            trio.open_nursery() as nursery,
        ):

            async def trickled_out() -> None:
                with pytest.raises(trio.BrokenResourceError):  # the node hangs up on it
                    await trickle(slow)

            nursery.start_soon(trickled_out)
            await started.wait()
            for n in range(1, 4):
                assert (await http.post(f"{node.url}/invoke/2/increment")).json() == n


async def test_calls_past_max_in_flight_get_503_with_retry_after(http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            towtruck.open_node(create_recorder, max_in_flight=1) as node,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(http.get, f"{node.url}/invoke/a/sleep/0.5")

            async def one_in_flight() -> bool:
                return bool((await http.get(f"{node.url}/health")).json()["in_flight"] == 1)

            await wait_until(one_in_flight)
            response = await http.get(f"{node.url}/invoke/b/plain")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "Overloaded"
    assert response.headers["retry-after"] == "1"


async def test_calls_past_max_in_flight_are_shed(autojump_clock: trio.testing.MockClock) -> None:
    outcomes: list[Any] = []
    async with towtruck.open_runtime(create_recorder, max_in_flight=2) as runtime:

        async def call(actor_id: str) -> None:
            try:
                outcomes.append(await runtime.client.invoke(actor_id, "sleep", 1))
            except towtruck.Overloaded as exc:
                outcomes.append(exc)

        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                for actor_id in "abc":
                    nursery.start_soon(call, actor_id)
                    await trio.testing.wait_all_tasks_blocked()
    assert outcomes[0].status == 503
    assert outcomes[1:] == ["slept", "slept"]


async def test_max_actors_holds_under_a_stream_of_new_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_recorder, max_actors=100) as runtime:
        with trio.fail_after(10_000):
            for i in range(20_000):
                await runtime.client.invoke(f"new{i}", "plain")
                assert len(runtime.catalog) <= 100
        stats = runtime.catalog.statistics()
    assert stats.activations == 20_000
    assert stats.deactivations >= 19_900
