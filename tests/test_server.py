"""towtruck's own server: keep-alive and graceful shutdown."""

from __future__ import annotations

import re

import pytest
import trio

import towtruck
from tests.actors import create_recorder
from tests.helpers import NETWORK_TEST_SECONDS


async def send_request(node: towtruck.Node, path: str) -> trio.SocketStream:
    """Open a connection, send one keep-alive GET, read the whole response."""
    stream = await trio.open_tcp_stream(node.address.host, node.address.port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += await stream.receive_some()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += await stream.receive_some()
    return stream


async def wait_closed_by_server(stream: trio.SocketStream) -> None:
    async with stream:
        while await stream.receive_some():
            pass


@pytest.mark.parametrize("path", ["/health", "/invoke/1/echo"])
async def test_idle_keep_alive_connections_are_closed(path: str) -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder, keep_alive_timeout=0.2) as node:
            stream = await send_request(node, path)
            await wait_closed_by_server(stream)


async def test_a_request_longer_than_the_keep_alive_timeout_is_answered() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(create_recorder, keep_alive_timeout=0.1) as node:
            stream = await send_request(node, "/invoke/1/sleep/0.5")
            await wait_closed_by_server(stream)


async def test_shutdown_closes_idle_connections_at_once() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with towtruck.open_node(
            create_recorder, keep_alive_timeout=1000, shutdown_timeout=1000
        ) as node:
            stream = await send_request(node, "/health")
        await wait_closed_by_server(stream)
