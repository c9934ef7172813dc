"""Answers the Quart-Trio app streams (a body in several ASGI messages, no length), as
towtruck's own server writes them: part by part, chunked or delimited by the close, cut
when the server stops; whole answers stay one write with their length."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio
from quart import Response

import towtruck
from tests.actors import create_recorder
from tests.helpers import NETWORK_TEST_SECONDS
from towtruck.server.serve import listen, serve

END = b"0\r\n\r\n"


@dataclass
class Served:
    host: str
    port: int
    gate: trio.Event  # lets /test/stream send its second part
    stop: trio.Event  # stops the server gracefully


@asynccontextmanager
async def streaming_server(**settings: object) -> AsyncIterator[Served]:
    """towtruck's own server, serving an App with two streaming routes added:
    ``/test/stream`` (a part, then another once ``gate`` is set) and
    ``/test/forever`` (a part every 50 ms, with no end)."""
    app = towtruck.App(create_recorder, port=0, **settings)
    gate = trio.Event()

    @app.routes.route("/test/stream", methods=["GET", "HEAD"])
    async def stream() -> Response:
        async def parts() -> AsyncIterator[bytes]:
            yield b"first\n"
            await gate.wait()
            yield b"second\n"

        return Response(parts(), content_type="text/plain")

    @app.routes.route("/test/forever", methods=["GET", "HEAD"])
    async def forever() -> Response:
        async def parts() -> AsyncIterator[bytes]:
            while True:
                yield b"tick\n"
                await trio.sleep(0.05)

        response = Response(parts(), content_type="text/plain")
        response.timeout = None
        return response

    config = app.runtime.settings
    sockets, _ = listen(config)
    host, port = sockets[0].getsockname()[:2]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve, app, config, sockets=sockets, shutdown_trigger=stop.wait)
        )
        yield Served(host, port, gate, stop)
        stop.set()


async def read_until(stream: trio.SocketStream, received: bytes, marker: bytes) -> bytes:
    """Read until ``marker`` is in what was received."""
    while marker not in received:
        data = await stream.receive_some()
        assert data, f"closed before {marker!r}: {received!r}"
        received += data
    return received


async def read_to_the_end(stream: trio.SocketStream, received: bytes) -> bytes:
    while data := await stream.receive_some():
        received += data
    return received


async def test_a_stream_is_written_as_it_comes_then_the_connection_serves_on() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            streaming_server() as served,
            await trio.open_tcp_stream(served.host, served.port) as stream,
        ):
            await stream.send_all(b"GET /test/stream HTTP/1.1\r\nhost: t\r\n\r\n")
            # The first part arrives while the app still waits to send the second.
            received = await read_until(stream, b"", b"first\n")
            assert not served.gate.is_set()
            served.gate.set()
            received = await read_until(stream, received, END)
            await stream.send_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
            after = await read_until(stream, b"", b"\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\ntransfer-encoding: chunked" in head
    assert b"content-length" not in head
    assert body == b"6\r\nfirst\n\r\n7\r\nsecond\n\r\n" + END
    assert after.startswith(b"HTTP/1.1 200")


async def test_a_client_that_will_close_gets_a_stream_delimited_by_the_close() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with streaming_server() as served:
            served.gate.set()
            async with await trio.open_tcp_stream(served.host, served.port) as stream:
                await stream.send_all(
                    b"GET /test/stream HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
                )
                received = await read_to_the_end(stream, b"")
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head
    assert b"transfer-encoding" not in head
    assert body == b"first\nsecond\n"


async def test_an_http10_client_that_keeps_alive_gets_no_chunks() -> None:
    """HTTP/1.0 cannot read a chunked answer: its stream is delimited by the close."""
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with streaming_server() as served:
            served.gate.set()
            async with await trio.open_tcp_stream(served.host, served.port) as stream:
                await stream.send_all(
                    b"GET /test/stream HTTP/1.0\r\nhost: t\r\nconnection: keep-alive\r\n\r\n"
                )
                received = await read_to_the_end(stream, b"")
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head
    assert body == b"first\nsecond\n"


async def test_a_whole_answer_is_still_one_piece_with_its_length() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            streaming_server() as served,
            await trio.open_tcp_stream(served.host, served.port) as stream,
        ):
            await stream.send_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
            received = await read_until(stream, b"", b"\r\n\r\n")
    head = received.partition(b"\r\n\r\n")[0]
    assert b"\r\ncontent-length: " in head
    assert b"transfer-encoding" not in head


async def test_a_stream_is_cut_at_once_when_the_server_stops() -> None:
    # Were the stop to wait for the stream, it would wait shutdown_timeout (30 s), past
    # the test's bound.
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            streaming_server(shutdown_timeout=30) as served,
            await trio.open_tcp_stream(served.host, served.port) as stream,
        ):
            await stream.send_all(b"GET /test/forever HTTP/1.1\r\nhost: t\r\n\r\n")
            received = await read_until(stream, b"", b"tick\n")
            served.stop.set()
            received = await read_to_the_end(stream, received)
    # Cut, not ended: no last chunk, so the client can tell.
    assert b"transfer-encoding: chunked" in received
    assert not received.endswith(END)


async def test_head_of_a_stream_is_the_head_alone() -> None:
    with trio.fail_after(NETWORK_TEST_SECONDS):
        async with (
            streaming_server() as served,
            await trio.open_tcp_stream(served.host, served.port) as stream,
        ):
            await stream.send_all(b"HEAD /test/forever HTTP/1.1\r\nhost: t\r\n\r\n")
            received = await read_until(stream, b"", b"\r\n\r\n")
            await stream.send_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
            after = await read_until(stream, received, b"\r\n\r\nHTTP/1.1 200")
    head, _, rest = after.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200")  # nothing between the two heads
