"""A peer that speaks just enough of towtruck's protocol to misbehave on purpose.

It answers heartbeats (with the records it is told to send), ``/query`` (never holds
anything) and ``/getbloom`` (404), and takes lanes: each call frame it reads goes to
``on_call``, which returns the frames to send back (none: the call is swallowed). A
real node joins it like any other peer, so tests can see what a broken peer does to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from towtruck import codec
from towtruck.cluster import wire

#: ``on_call(number, envelope)``: the bytes to send back on the lane.
OnCall = Callable[[int, bytes], bytes]


def answer(number: int, status: int, body: bytes) -> bytes:
    """A lane's answer frame."""
    return wire.frame(number, b"A", status.to_bytes(2, "big") + body)


def swallow(number: int, envelope: bytes) -> bytes:
    """Read the call, never answer it."""
    return b""


class FakePeer:
    """Serve with ``await nursery.start(peer.serve)``; ``peer.address`` is its
    ``host:port``.

    Args:
        on_call: What it answers to each call on a lane.
        records: Its membership records for each heartbeat answer (called each time);
            by default, itself joined, as a fresh node would say.
        hang_lanes: Accept the connection of a lane, then never answer the upgrade.
        answer_probes: Answer a lane's probes at once (as a live towtruck node's reader
            does), whatever it does with calls.
    """

    def __init__(
        self,
        on_call: OnCall = swallow,
        *,
        records: Callable[[FakePeer], list[dict[str, Any]]] | None = None,
        hang_lanes: bool = False,
        answer_probes: bool = False,
    ) -> None:
        self.on_call = on_call
        self.records = records or (lambda peer: [peer.record()])
        self.hang_lanes = hang_lanes
        self.answer_probes = answer_probes
        self.address = ""
        self.heartbeats = 0
        self.calls: list[bytes] = []
        self.lanes_opened = 0
        self.born = 1_000_000_000
        #: The highest membership version seen in the heartbeats it was sent.
        self.newest = 0

    def record(self, *, joined: bool = True, version: int | None = None) -> dict[str, Any]:
        """Its own membership record."""
        return {
            "address": self.address,
            "joined": joined,
            "version": self.born if version is None else version,
            "born": self.born,
            "by": self.address,
        }

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.address)

    async def _connection(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            async with stream:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    line, *fields = head.decode("latin-1").split("\r\n")
                    verb, path, _ = line.split(" ", 2)
                    headers = {
                        name.strip().lower(): value.strip()
                        for name, _, value in (f.partition(":") for f in fields)
                    }
                    length = int(headers.get("content-length", "0"))
                    while len(buffer) < length:
                        buffer += await stream.receive_some(65536)
                    body, buffer = buffer[:length], buffer[length:]
                    if path == "/cluster/lane":
                        await self._lane(stream, buffer)
                        return
                    await stream.send_all(self._respond(verb, path, body))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _respond(self, verb: str, path: str, body: bytes) -> bytes:
        if path == "/cluster/heartbeat":
            self.heartbeats += 1
            hello = codec.loads(body)
            for record in hello.get("members", []) if isinstance(hello, dict) else []:
                self.newest = max(self.newest, record.get("version", 0))
            status, payload = 200, {"from": self.address, "members": self.records(self)}
        elif path.startswith("/query/"):
            status, payload = 200, {"exists": False}
        else:
            status, payload = 404, {"error": {"type": "RouteNotFound", "message": path}}
        content = codec.dumps(payload)
        return (
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(content)}\r\n\r\n"
        ).encode() + content

    async def _lane(self, stream: trio.SocketStream, initial: bytes) -> None:
        self.lanes_opened += 1
        if self.hang_lanes:
            await trio.sleep_forever()
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
            b"upgrade: towtruck-lane\r\n\r\n"
        )
        buffer = bytearray(initial)
        while True:
            for number, kind, envelope in wire.split(buffer):
                if kind == b"C":
                    self.calls.append(envelope)
                    reply = self.on_call(number, envelope)
                    if reply:
                        await stream.send_all(reply)
                elif kind == b"P" and self.answer_probes:
                    await stream.send_all(wire.frame(number, b"Q", b""))
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
