"""The server's fast lane for /invoke: pipelining, HEAD, query strings, Connection: close."""

from __future__ import annotations

import gc
import types
from collections.abc import AsyncIterator

import pytest
import trio

import towtruck
from tests.actors import create_counter
from tests.conftest import NETWORK_TEST_SECONDS


@pytest.fixture
async def node() -> AsyncIterator[towtruck.Node]:
    async with towtruck.open_node(create_counter, environ={}) as node:
        yield node


async def exchange(node: towtruck.Node, requests: bytes, answers: int) -> list[bytes]:
    """Send raw requests on one connection; read ``answers`` whole responses."""
    async with await trio.open_tcp_stream(node.address.host, node.address.port) as stream:
        await stream.send_all(requests)
        received = b""
        responses: list[bytes] = []
        while len(responses) < answers:
            chunk = await stream.receive_some()
            assert chunk, f"closed after {responses}"
            received += chunk
            while b"\r\n\r\n" in received:
                head, _, rest = received.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(rest) < length:
                    break
                responses.append(head + b"\r\n\r\n" + rest[:length])
                received = rest[length:]
        return responses


async def until_closed(node: towtruck.Node, request: bytes) -> bytes:
    """Send one raw request; read everything until the server closes the connection."""
    async with await trio.open_tcp_stream(node.address.host, node.address.port) as stream:
        await stream.send_all(request)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
        return received


async def test_pipelined_requests_are_answered_in_order(node: towtruck.Node) -> None:
    request = b"POST /invoke/c/increment HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n"
    with trio.fail_after(NETWORK_TEST_SECONDS):
        responses = await exchange(
            node, request * 3 + b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n", 4
        )
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in responses[:3]] == [b"1", b"2", b"3"]
    assert b'"actors":1' in responses[3]


async def test_the_query_string_is_not_part_of_the_path(node: towtruck.Node) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        (response,) = await exchange(node, b"GET /invoke/c/get?x=1 HTTP/1.1\r\nhost: t\r\n\r\n", 1)
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"\r\n\r\n0")


async def test_head_is_refused_without_a_body(node: towtruck.Node) -> None:
    # HEAD runs no method (test_app.py): it is answered 405, and like every answer to
    # HEAD, without the body its content-length announces.
    with trio.fail_after(NETWORK_TEST_SECONDS):
        received = await until_closed(
            node, b"HEAD /invoke/c/get HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
        )
    assert received.startswith(b"HTTP/1.1 405")
    assert b"\r\nallow: GET, POST, PUT, PATCH, DELETE, OPTIONS\r\n" in received
    assert received.endswith(b"\r\n\r\n")


async def test_connection_close_is_honoured(node: towtruck.Node) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        received = await until_closed(
            node, b"GET /invoke/c/get HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
        )
    assert received.startswith(b"HTTP/1.1 200")
    assert b"connection: close" in received.lower()


async def test_a_malformed_request_is_refused_and_the_node_serves_on(node: towtruck.Node) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        received = await until_closed(node, b"GET /invoke/c/get HTTP/1.1\r\nbad header\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 400")
        (response,) = await exchange(node, b"GET /invoke/c/get HTTP/1.1\r\nhost: t\r\n\r\n", 1)
    assert response.startswith(b"HTTP/1.1 200")


def tracebacks_through(module: object) -> int:
    """How many traceback entries alive point into ``module``'s code."""
    gc.collect()
    filename = getattr(module, "__file__", None)
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, types.TracebackType) and o.tb_frame.f_code.co_filename == filename
    )


@pytest.mark.parametrize("size", [20 * 1024, 200])
async def test_refused_requests_keep_nothing_of_theirs_alive(
    node: towtruck.Node, size: int
) -> None:
    # 431 for headers over 16 KiB, 413 for a body over max_body: each error is raised
    # afresh, so no traceback (holding the request's frames) outlives its answer.
    request = (
        b"POST /invoke/c/increment HTTP/1.1\r\nhost: t\r\nx-big: "
        + b"x" * size
        + b"\r\ncontent-length: 2000000\r\nconnection: close\r\n\r\n"
    )
    status = b"HTTP/1.1 431" if size > 16 * 1024 else b"HTTP/1.1 413"
    with trio.fail_after(NETWORK_TEST_SECONDS):
        assert (await until_closed(node, request)).startswith(status)
        before = tracebacks_through(towtruck.app)
        for _ in range(50):
            assert (await until_closed(node, request)).startswith(status)
        assert tracebacks_through(towtruck.app) - before < 10
