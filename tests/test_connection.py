"""The server's fast lane for /invoke: pipelining, HEAD, query strings, Connection: close."""

from __future__ import annotations

import gc
import re
import signal
import types
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio

import towtruck
import towtruck.server.app
from tests.actors import create_counter
from tests.helpers import NETWORK_TEST_SECONDS, until_closed, wait_until
from tests.processes import PROCESS_SECONDS, running, towtruck_command


@pytest.fixture
async def node() -> AsyncIterator[towtruck.Node]:
    async with towtruck.open_node(create_counter) as node:
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


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """Read one whole response from a keep-alive connection: its head and body."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some()
        assert chunk, f"closed before an answer: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = await stream.receive_some()
        assert chunk, f"closed inside an answer: {head!r}"
        rest += chunk
    del buffer[: len(head) + 4 + length]
    return head, rest[:length]


def process_state(pid: int) -> str:
    """A process's state letter from ``/proc`` (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


KEEP_ALIVE = 0.2
CONNECTIONS = 8


def increment(i: int) -> bytes:
    return f"POST /invoke/c{i}/increment HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n".encode()


@asynccontextmanager
async def open_connections() -> AsyncIterator[tuple[trio.Process, list[Keeper]]]:
    """A ``towtruck serve`` process with a short keep-alive timeout, and keep-alive
    connections to it, each used for one call (actor ``c{i}`` counts 1)."""
    argv = [
        *towtruck_command(),
        "serve",
        "tests.actors:create_counter",
        "--port",
        "0",
        "--keep-alive-timeout",
        str(KEEP_ALIVE),
    ]
    async with (
        running(argv, ready=r"serving on http://127\.0\.0\.1:(\d+)") as (process, match, _),
        AsyncExitStack() as stack,
    ):
        keepers = []
        for i in range(CONNECTIONS):
            stream = await trio.open_tcp_stream("127.0.0.1", int(match.group(1)))
            keeper = Keeper(await stack.enter_async_context(stream))
            await keeper.stream.send_all(increment(i))
            assert await keeper.answer() == (b"HTTP/1.1 200 ", b"1")
            keepers.append(keeper)
        yield process, keepers


class Keeper:
    """A keep-alive connection and what it has received but not yet read."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def answer(self) -> tuple[bytes, bytes]:
        """The next response's status line (without its reason phrase) and body."""
        head, body = await read_response(self.stream, self.buffer)
        version, status, *_ = head.split(b"\r\n")[0].split(b" ")
        return version + b" " + status + b" ", body


@asynccontextmanager
async def stalled(process: trio.Process) -> AsyncIterator[None]:
    """Stop the process (SIGSTOP) for the block, and for several keep-alive timeouts
    at least (the stall itself is what is tested); then let it run on (SIGCONT)."""

    async def stopped() -> bool:
        return process_state(process.pid) == "T"

    process.send_signal(signal.SIGSTOP)
    try:
        await wait_until(stopped)
        stopped_at = trio.current_time()
        yield
        await trio.sleep_until(stopped_at + 4 * KEEP_ALIVE)
    finally:
        process.send_signal(signal.SIGCONT)


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_calls_sent_during_a_stall_are_answered_when_the_node_wakes() -> None:
    # SIGSTOP: the node's process does not run, as in a long pause of the host or of
    # blocking code; its keep-alive connections stay open, and clients send on them.
    answers = []
    with trio.fail_after(PROCESS_SECONDS):
        async with open_connections() as (process, keepers):
            # Three stalls: waking, the node's tasks run in an order trio picks at
            # random, and the reader of a connection may see its request before the
            # reaper sees the connection idle.
            for _ in range(3):
                async with stalled(process):
                    for i, keeper in enumerate(keepers):
                        await keeper.stream.send_all(increment(i))
                answers += [await keeper.answer() for keeper in keepers]
            process.send_signal(signal.SIGTERM)
    assert answers == [
        (b"HTTP/1.1 200 ", str(count).encode()) for count in (2, 3, 4) for _ in keepers
    ]


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
async def test_calls_sent_to_a_stalled_node_told_to_stop_are_answered() -> None:
    # The node wakes with a SIGTERM and calls waiting on idle connections: a graceful
    # stop closes idle connections at once, but not those with a request unread.
    with trio.fail_after(PROCESS_SECONDS):
        async with open_connections() as (process, keepers):
            async with stalled(process):
                for i, keeper in enumerate(keepers):
                    await keeper.stream.send_all(increment(i))
                process.send_signal(signal.SIGTERM)
            answers = [await keeper.answer() for keeper in keepers]
            await process.wait()
    assert process.returncode == 0
    for status, body in answers:
        # Ran (200), or refused by the stopping node (503 NodeStopping: it did not run).
        assert (status, body) == (b"HTTP/1.1 200 ", b"2") or (
            status == b"HTTP/1.1 503 " and b'"NodeStopping"' in body
        ), (status, body)


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
        before = tracebacks_through(towtruck.server.app)
        for _ in range(50):
            assert (await until_closed(node, request)).startswith(status)
        assert tracebacks_through(towtruck.server.app) - before < 10


@pytest.mark.parametrize("path", [b"/invoke/c/increment", b"/ping/x"])
async def test_a_client_that_expects_100_continue_is_told_to_go_on(
    node: towtruck.Node, path: bytes
) -> None:
    """As curl does for bodies over 1 KiB: it waits for "100 Continue" (a second, or
    for ever, depending on the client) before it sends its body."""
    head = (
        b"POST " + path + b" HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n"
        b"content-length: 4\r\nconnection: close\r\n\r\n"
    )
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with await trio.open_tcp_stream(node.address.host, node.address.port) as stream:
            await stream.send_all(head)
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some()
            assert received.startswith(b"HTTP/1.1 100 "), received
            await stream.send_all(b"null")
            while chunk := await stream.receive_some():
                received += chunk
    final = received.partition(b"\r\n\r\n")[2]
    assert final.startswith(b"HTTP/1.1 200 "), received
