"""The HTTP surface of one node: real Hypercorn on 127.0.0.1, real httpx calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as stock_serve

import towtruck
from tests.actors import EVENTS, create_counter, create_recorder
from tests.helpers import NETWORK_TEST_SECONDS


@pytest.fixture
async def node() -> AsyncIterator[towtruck.Node]:
    EVENTS.clear()
    async with towtruck.open_node(
        create_recorder, max_body=5000, call_timeout=1, mailbox_size=2
    ) as node:
        yield node


def error_of(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """Check that a response is a towtruck JSON error; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == type_
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "traceback" not in error
    return error  # type: ignore[no-any-return]


async def test_the_readme_greeter(http: httpx.AsyncClient) -> None:
    from examples import greeter

    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(greeter.create_actor) as node:
            response = await http.get(f"{node.url}/invoke/1/hello")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"hello": "from actor 1"}


@pytest.mark.parametrize(
    ("verb", "path", "body", "data"),
    [
        ("GET", "/invoke/1/echo", None, []),
        ("GET", "/invoke/1/echo/", None, []),
        ("GET", "/invoke/1/echo/-29.47/-100.41", None, ["-29.47", "-100.41"]),
        ("DELETE", "/invoke/1/echo/a//b", None, ["a", "", "b"]),
        ("GET", "/invoke/1/echo/caf%C3%A9/a%2Fb", None, ["café", "a/b"]),
        ("POST", "/invoke/1/echo", b'{"lat": 1.5}', {"lat": 1.5}),
        ("PUT", "/invoke/1/echo", b"[1, 2]", [1, 2]),
        ("PATCH", "/invoke/1/echo", b'"text"', "text"),
        ("POST", "/invoke/1/echo", b"", None),
    ],
)
async def test_data_comes_from_the_body_or_the_path(
    node: towtruck.Node,
    http: httpx.AsyncClient,
    verb: str,
    path: str,
    body: bytes | None,
    data: Any,
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        response = await http.request(verb, node.url + path, content=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"data": data, "activated": True}


async def test_ids_may_hold_encoded_slashes(node: towtruck.Node, http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        assert (await http.get(f"{node.url}/invoke/a%2Fb/plain")).json() == "plain []"
        assert (await http.get(f"{node.url}/query/a%2Fb")).json() == {"exists": True}
        assert (await http.get(f"{node.url}/query/a")).json() == {"exists": False}
    assert "a/b" in node.runtime.catalog


@pytest.mark.parametrize(
    ("verb", "path", "body", "status", "type_"),
    [
        ("POST", "/invoke/1/echo", b"{bad", 400, "InvalidJSON"),
        ("POST", "/invoke/1/echo", b"[" * 1100 + b"]" * 1100, 400, "InvalidJSON"),
        ("POST", "/invoke/1/echo/extra", b"{}", 400, "BadRequest"),
        ("GET", "/invoke//echo", None, 400, "InvalidActorId"),
        ("GET", "/invoke/" + "x" * 300 + "/echo", None, 400, "InvalidActorId"),
        ("GET", "/invoke/%00/echo", None, 400, "InvalidActorId"),
        ("GET", "/invoke/%FF/echo", None, 400, "BadRequest"),
        ("GET", "/invoke/1", None, 404, "RouteNotFound"),
        ("GET", "/invoke/1/", None, 404, "RouteNotFound"),
        ("GET", "/nothing/here", None, 404, "RouteNotFound"),
        ("GET", "/invoke/1/nope", None, 404, "MethodNotFound"),
        ("GET", "/invoke/1/_private", None, 404, "MethodNotFound"),
        ("GET", "/invoke/1/__init__", None, 404, "MethodNotFound"),
        ("GET", "/invoke/1/__class__", None, 404, "MethodNotFound"),
        ("GET", "/invoke/1/activate", None, 404, "MethodNotFound"),
        ("GET", "/invoke/1/deactivate", None, 404, "MethodNotFound"),
        ("GET", "/invoke/1/secret", None, 404, "MethodNotFound"),
        ("GET", "/invoke/1/prop", None, 404, "MethodNotFound"),
        ("POST", "/health", b"", 405, "MethodNotAllowed"),
        ("POST", "/invoke/1/echo", b"[" + b"1," * 3000 + b"1]", 413, "PayloadTooLarge"),
        ("POST", "/ping", b"x" * 6000, 413, "PayloadTooLarge"),
    ],
)
async def test_bad_requests_get_json_errors(
    node: towtruck.Node,
    http: httpx.AsyncClient,
    verb: str,
    path: str,
    body: bytes | None,
    status: int,
    type_: str,
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        response = await http.request(verb, node.url + path, content=body)
        error_of(response, status, type_)
        assert (await http.get(f"{node.url}/ping")).status_code == 200, "the node still serves"


async def test_a_streamed_body_over_max_body_is_refused(node: towtruck.Node) -> None:
    chunk = b"64\r\n" + b" " * 100 + b"\r\n"  # chunked encoding, 100 bytes a chunk
    head = b"POST /invoke/1/echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with await trio.open_tcp_stream(node.address.host, node.address.port) as stream:
            await stream.send_all(head)
            answer = b""
            try:
                for _ in range(60):
                    await stream.send_all(chunk)
            except trio.BrokenResourceError:
                pass  # refused before the end: the server closed the connection
            while data := await stream.receive_some():
                answer += data
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b'"type":"PayloadTooLarge"' in answer


async def test_a_method_that_raises_answers_500_and_the_actor_lives_on(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        await http.get(f"{node.url}/invoke/1/echo")
        error = error_of(await http.get(f"{node.url}/invoke/1/fail/x"), 500, "ActorError")
        assert error["exception"] == "ValueError"
        assert error["message"] == "bad value ['x']"
        assert (error["actor"], error["method"], error["node"]) == ("1", "fail", str(node.address))
        assert (await http.get(f"{node.url}/invoke/1/echo")).status_code == 200
        error = error_of(await http.get(f"{node.url}/invoke/1/not_json"), 500, "ResultNotJSON")
    assert node.runtime.catalog.statistics().activations == 1


async def test_debug_puts_the_traceback_in_errors(http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder, debug=True) as node:
            response = await http.get(f"{node.url}/invoke/1/fail/x")
    traceback = "".join(response.json()["error"]["traceback"])
    assert "ValueError: bad value" in traceback
    assert "tests/actors.py" in traceback


async def test_a_slow_call_answers_504(node: towtruck.Node, http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        error = error_of(await http.get(f"{node.url}/invoke/1/sleep/30"), 504, "CallTimeout")
        assert error["actor"] == "1"
        assert (await http.get(f"{node.url}/invoke/1/echo")).status_code == 200


async def test_a_full_mailbox_answers_503_with_retry_after(
    node: towtruck.Node, http: httpx.AsyncClient
) -> None:
    responses: list[httpx.Response] = []

    async def call() -> None:
        responses.append(await http.get(f"{node.url}/invoke/1/sleep/0.5"))

    with trio.fail_after(NETWORK_TEST_SECONDS):
        await http.get(f"{node.url}/invoke/1/echo")
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(call)
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses, statuses
    assert 503 in statuses, statuses
    refused = [r.json()["error"]["type"] for r in responses if r.status_code == 503]
    assert "MailboxFull" in refused, refused
    for response in responses:
        if response.status_code == 503:
            # Or Backlogged: a call that got into the mailbox but, behind two turns of
            # 0.5 s, could not start before its deadline (1 s) is refused, not left to 504.
            error = error_of(response, 503, response.json()["error"]["type"])
            assert error["type"] in ("MailboxFull", "Backlogged"), error
            assert response.headers["retry-after"] == "1"


async def test_turns_never_interleave_under_concurrent_http_calls(http: httpx.AsyncClient) -> None:
    limits = httpx.Limits(max_connections=50)
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            towtruck.open_node(create_counter) as node,
            httpx.AsyncClient(base_url=node.url, timeout=10, limits=limits) as client,
        ):
            statuses: list[int] = []

            async def increment() -> None:
                statuses.append((await client.post("/invoke/c/increment")).status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(increment)
            assert statuses == [200] * 200
            assert (await client.get("/invoke/c/get")).json() == 200


async def test_actors_calling_actors_over_http(http: httpx.AsyncClient) -> None:
    from examples import chain

    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(chain.create_actor, call_timeout=1) as node:
            assert (await http.get(f"{node.url}/invoke/1/hello")).json() == {
                "goodbye": "from actor 1"
            }
            answer = (await http.get(f"{node.url}/invoke/1/ask/2")).json()
            assert answer == {"answer": "from actor 2", "asker says": "from actor 1"}


async def test_health_ping_query_and_rungc(node: towtruck.Node, http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        await http.get(f"{node.url}/invoke/1/echo")
        await http.get(f"{node.url}/invoke/1/fail")
        health = (await http.get(f"{node.url}/health")).json()
        assert (await http.get(f"{node.url}/ping/a/b")).json() == ["ping", "a", "b"]
        assert (await http.post(f"{node.url}/ping")).json() == ["ping"]
        assert (await http.get(f"{node.url}/query/1")).json() == {"exists": True}
        assert (await http.get(f"{node.url}/rungc")).json() == {"garbageCollected": 0}
    assert health["actors"] == 1
    assert health["node"] == str(node.address)
    assert health["members"] == [{"address": str(node.address), "state": "self"}]
    assert (health["calls"], health["errors"], health["in_flight"]) == (2, 1, 0)
    assert health["uptime"] >= 0
    assert abs(health["time"] / 1000 - __import__("time").time()) < 60
    assert health["catalog"]["mailbox_size"] == 2
    assert set(health["catalog"]) == {
        "actors",
        "busy",
        "deactivating",
        "queued",
        "max_actors",
        "mailbox_size",
        "activations",
        "deactivations",
    }


async def test_rungc_collects_idle_actors(http: httpx.AsyncClient) -> None:
    EVENTS.clear()
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder, max_inactivity=0.01) as node:
            await http.get(f"{node.url}/invoke/1/echo")
            await http.get(f"{node.url}/invoke/2/echo")
            await trio.sleep(0.02)  # time itself is the condition: max_inactivity passes
            assert (await http.get(f"{node.url}/rungc")).json() == {"garbageCollected": 2}
            assert (await http.get(f"{node.url}/query/1")).json() == {"exists": False}
    assert sorted(EVENTS) == [(i, e) for i in "12" for e in ("activate", "deactivate")]


async def test_leaving_open_node_runs_every_deactivate(http: httpx.AsyncClient) -> None:
    EVENTS.clear()
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder) as node:
            for actor_id in range(5):
                await http.get(f"{node.url}/invoke/{actor_id}/echo")
    assert sorted(e for e in EVENTS if e[1] == "deactivate") == [
        (str(i), "deactivate") for i in range(5)
    ]


@asynccontextmanager
async def served(how: str, **settings: Any) -> AsyncIterator[str]:
    """A counter node's URL: served by towtruck's own server (``open_node``, where
    ``/invoke`` skips ASGI) or by stock Hypercorn (``App`` as a plain ASGI app)."""
    if how == "open_node":
        async with towtruck.open_node(create_counter, **settings) as node:
            yield node.url
        return
    config = Config()
    config.bind = ["127.0.0.1:0"]
    app = towtruck.App(create_counter, **settings)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        (url,) = await nursery.start(partial(stock_serve, app, config, shutdown_trigger=stop.wait))
        yield url
        stop.set()


CALL_VERBS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"


@pytest.mark.parametrize("how", ["open_node", "hypercorn"])
async def test_head_and_options_on_invoke_run_nothing(how: str, http: httpx.AsyncClient) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with served(how) as url:
            for _ in range(2):
                head = await http.head(f"{url}/invoke/c/increment")
                assert head.status_code == 405
                assert head.headers["allow"] == CALL_VERBS
                assert head.content == b""
                options = await http.options(f"{url}/invoke/c/increment")
                assert options.status_code == 200, options.text
                assert options.headers["allow"] == CALL_VERBS
                assert options.content == b""
                other = await http.request("TRACE", f"{url}/invoke/c/increment")
                error_of(other, 405, "MethodNotAllowed")
                assert other.headers["allow"] == CALL_VERBS
            assert (await http.get(f"{url}/invoke/c/get")).json() == 0
            for verb in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                await http.request(verb, f"{url}/invoke/c/increment")
            assert (await http.get(f"{url}/invoke/c/get")).json() == 5


@pytest.mark.parametrize(
    "route", ["/rungc", "/updateblooms", "/addserver/127.0.0.1:1", "/removeserver/127.0.0.1:1"]
)
async def test_head_never_runs_a_route_that_acts(http: httpx.AsyncClient, route: str) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_counter) as node:
            await node.client.invoke("a", "increment")
            node.runtime.catalog.get("a").touched -= 3600  # type: ignore[union-attr]
            response = await http.head(f"{node.url}{route}")
            assert response.status_code == 405
            assert response.headers["allow"] == "GET, POST"
            assert "a" in node.runtime.catalog, "HEAD /rungc collected nothing"


async def test_the_client_can_shorten_a_calls_deadline(http: httpx.AsyncClient) -> None:
    from tests import served

    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(served.create_actor) as node:
            url = f"{node.url}/invoke/s/sleep/5"
            late = await http.get(url, headers={"towtruck-timeout": "0.2"})
            assert late.status_code == 504
            assert late.json()["error"]["type"] == "CallTimeout"
            for bad in ("0", "-1", "soon", "inf", "nan"):
                refused = await http.get(url, headers={"towtruck-timeout": bad})
                assert refused.status_code == 400, bad
                assert "towtruck-timeout" in refused.json()["error"]["message"]
            # Never longer than call_timeout: the header only shortens.
            quick = await http.get(
                f"{node.url}/invoke/s/hello", headers={"towtruck-timeout": "1e9"}
            )
            assert quick.status_code == 200
