"""towtruck.sockets: reads and writes with fewer scheduler rounds, same outcomes."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
import trio.testing

from towtruck.transport import sockets

TEST_SECONDS = 10


@pytest.fixture
async def pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """Two ends of a TCP connection on loopback."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    ends = trio.SocketStream(client), trio.SocketStream(server)
    yield ends
    for end in ends:
        end.socket.close()


@pytest.mark.parametrize("drained", [True, False])
async def test_receive_returns_what_was_sent_and_is_a_checkpoint(
    pair: tuple[trio.SocketStream, trio.SocketStream], drained: bool
) -> None:
    a, b = pair
    with trio.fail_after(TEST_SECONDS):
        await a.send_all(b"hello")
        await trio.testing.wait_all_tasks_blocked()
        with trio.testing.assert_checkpoints():
            assert await sockets.receive(b, 1024, drained=drained) == b"hello"


async def test_a_read_that_finds_bytes_right_after_yielding_yields_once_more(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    # A connection that has just answered reads its client's next request after one
    # round of the others, and answers it after another, as trio's own reads do: the
    # connections whose request came while they waited are not served behind it.
    a, b = pair
    me = trio.lowlevel.current_task()

    class Steps(trio.abc.Instrument):
        count = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task is me:
                Steps.count += 1

    with trio.fail_after(TEST_SECONDS):
        await a.send_all(b"next")
        await trio.testing.wait_all_tasks_blocked()
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        try:
            assert await sockets.receive(b, 1024, drained=True, yield_first=True) == b"next"
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert Steps.count == 2  # two yields: two steps after the one that called


async def test_receive_waits_for_data(pair: tuple[trio.SocketStream, trio.SocketStream]) -> None:
    a, b = pair
    with trio.fail_after(TEST_SECONDS):
        async with trio.open_nursery() as nursery:
            received: list[bytes] = []

            async def read() -> None:
                received.append(await sockets.receive(b, 1024, drained=False))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert received == []
            await a.send_all(b"later")
        assert received == [b"later"]


async def test_receive_gives_empty_bytes_once_the_peer_closed(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    a, b = pair
    with trio.fail_after(TEST_SECONDS):
        await a.send_all(b"last")
        await a.aclose()
        assert await sockets.receive(b, 1024, drained=True) == b"last"
        assert await sockets.receive(b, 1024, drained=False) == b""


async def test_closing_the_socket_wakes_a_waiting_receive(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    _, b = pair
    with trio.fail_after(TEST_SECONDS):
        with pytest.RaisesGroup(trio.ClosedResourceError):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(sockets.receive, b, 1024, drained=True))
                await trio.testing.wait_all_tasks_blocked()
                b.socket.close()
        for drained in (False, True):
            with pytest.raises(trio.ClosedResourceError):
                await sockets.receive(b, 1024, drained=drained)


async def test_a_reset_connection_is_broken(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    a, b = pair
    with trio.fail_after(TEST_SECONDS):
        # Closing with SO_LINGER of 0 sends a reset instead of a clean close.
        a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.socket.close()
        with pytest.raises(trio.BrokenResourceError):
            await sockets.receive(b, 1024, drained=True)


async def test_send_now_sends_what_fits_and_never_waits(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    a, b = pair
    with trio.fail_after(TEST_SECONDS):
        assert sockets.send_now(a, b"ping") == 4
        assert await sockets.receive(b, 1024, drained=True) == b"ping"
        chunk = b"x" * 1024 * 1024
        sent = [sockets.send_now(a, chunk) for _ in range(64)]  # far past the buffers
        assert 0 in sent  # the socket filled up: nothing more was taken, nothing waited
        total = sum(sent)
        received = 0
        while received < total:
            received += len(await sockets.receive(b, 1024 * 1024, drained=False))
        assert received == total


async def test_send_now_on_a_closed_socket_sends_nothing(
    pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    a, _ = pair
    a.socket.close()
    assert sockets.send_now(a, b"lost") == 0
