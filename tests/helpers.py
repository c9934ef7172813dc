"""Helpers the test modules share: bounds, quick cluster settings, polling, ids by owner
and raw connections. Tests import them from here, never from one another."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import trio

import towtruck
from towtruck.cluster import placement

#: Wall-clock bound for a test that talks to real servers.
NETWORK_TEST_SECONDS = 20
#: Wall-clock bound for a test of a cluster of real nodes.
TEST_SECONDS = 60
#: Quick failure detection: a dead node leaves placement after 3 x 0.2 s.
FAST = {"heartbeat_interval": 0.2, "heartbeat_misses": 3, "bloom_interval": 0.2}
POLL_SECONDS = 0.05


async def wait_until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it is true (bound it with ``trio.fail_after``)."""
    while True:
        if await check():
            return
        await trio.sleep(POLL_SECONDS)


def owned_by(
    node: towtruck.Node, members: list[towtruck.Node], count: int, prefix: str
) -> list[str]:
    """Ids that placement gives to ``node`` among ``members``."""
    names = [str(m.address) for m in members]
    ids = (f"{prefix}{i}" for i in itertools.count())
    return list(
        itertools.islice((i for i in ids if placement.owner(i, names) == str(node.address)), count)
    )


async def until_closed(node: towtruck.Node, request: bytes) -> bytes:
    """Send one raw request; read everything until the server closes the connection."""
    async with await trio.open_tcp_stream(node.address.host, node.address.port) as stream:
        await stream.send_all(request)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
        return received
