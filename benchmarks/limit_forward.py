"""The floor of a forwarding design: ``limit_server.py`` as N processes, one owner per id.

The yardstick (``limit_server.py``: minimal HTTP/1.1 keep-alive on raw trio sockets,
``GET /invoke/<id>/<method>`` answered with ``{"hello": "from actor <id>"}`` from a dict
of plain objects) run as N processes sharing one TCP port with ``SO_REUSEPORT``, each
owning the ids with ``zlib.crc32(id) % N == index`` (single activation). A request for
an id the process does not own is forwarded to its owner over one persistent Unix
domain socket per pair of processes (a ``socketpair`` made before forking), and the
owner's answer comes back on it:

- frames are a 7-byte header (kind, call number, payload length) and a payload: the id
  in a call, the JSON body in an answer; answers are matched to calls by number;
- writes are batched: frames are appended to the lane's buffer, and one writer task per
  lane sends all of it with one ``send`` per wake-up;
- reads take everything available (up to 256 KiB) and handle every frame in it: an
  answer reschedules the waiting HTTP task directly (``trio.lowlevel``), a call is
  answered according to ``--answer``:

  ``direct``   on the reader itself, no task switch (the actor is a dict lookup);
  ``dispatch`` by one answering task per lane, woken once per received batch;
  ``task``     by a new task per call (``nursery.start_soon``);
  ``local``    never: a control that breaks single activation, each process answering
               every id itself (the cost of N processes without any forwarding).

With N = 1 nothing is forwarded and the HTTP path is the yardstick's. It is a floor, not
a product: no timeouts, no failure handling, no backpressure.

    python benchmarks/limit_forward.py PORT [--processes N] [--answer MODE] [--stats DIR]

With ``--stats DIR`` each worker writes ``DIR/<index>`` (``requests forwarded served``:
HTTP requests it answered, calls it forwarded, forwarded calls it answered as owner)
when it receives SIGUSR1. The supervisor (N > 1) forks the workers and only waits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import outcome
import trio
from trio.lowlevel import Abort, current_task, reschedule, wait_task_rescheduled

HEADER = struct.Struct("<BIH")  # kind, call number, payload length
HEADER_SIZE = HEADER.size
pack_header = HEADER.pack
unpack_header = HEADER.unpack_from
CALL, ANSWER = 0, 1
RESPONSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "

actors: dict[str, A] = {}
#: HTTP requests answered, calls forwarded, forwarded calls answered as owner.
stats = [0, 0, 0]


class A:
    __slots__ = ("id",)

    def __init__(self, id: str) -> None:
        self.id = id


def answer(aid: str) -> bytes:
    """What the actor ``aid`` answers (activated on first use), as the yardstick does."""
    a = actors.get(aid)
    if a is None:
        a = actors[aid] = A(aid)
    return json.dumps({"hello": "from actor " + a.id}).encode()


def _abort(_: Any) -> Abort:
    return Abort.SUCCEEDED


class Lane:
    """One end of the persistent Unix domain socket between two workers."""

    __slots__ = ("calls", "inbox", "next_call", "out", "parked", "pending", "sock")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.out = bytearray()  # frames not yet sent
        self.parked: trio.lowlevel.Task | None = None  # the writer, while out is empty
        self.pending: dict[int, trio.lowlevel.Task] = {}  # call number -> waiting task
        self.next_call = 0
        self.inbox: list[tuple[int, bytes]] = []  # calls for the dispatcher (--answer dispatch)
        self.calls: trio.lowlevel.Task | None = None  # the dispatcher, while inbox is empty

    def push(self, frames: bytes) -> None:
        self.out += frames
        if self.parked is not None:
            task, self.parked = self.parked, None
            reschedule(task)

    async def call(self, aid: bytes) -> bytes:
        """Forward a call on ``aid`` to the owner; its answer's body."""
        number = self.next_call = (self.next_call + 1) & 0xFFFFFFFF
        self.pending[number] = current_task()
        self.push(pack_header(CALL, number, len(aid)) + aid)

        def abort(_: Any) -> Abort:
            self.pending.pop(number, None)
            return Abort.SUCCEEDED

        return await wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def write(self) -> None:
        """Send everything queued, one ``send`` per wake-up (partial sends continued)."""
        send = self.sock.send
        while True:
            if not self.out:
                self.parked = current_task()
                await wait_task_rescheduled(_abort)
            data, self.out = self.out, bytearray()
            sent = await send(data)
            while sent < len(data):
                data = data[sent:]
                sent = await send(data)

    async def read(self, mode: str, nursery: trio.Nursery) -> None:
        """Handle every frame in each receive: answers wake their callers, calls are
        answered as ``mode`` says."""
        recv, pending = self.sock.recv, self.pending
        direct, dispatch = mode == "direct", mode == "dispatch"
        rest = b""
        while True:
            data = await recv(262144)
            if not data:
                return
            buf = rest + data if rest else data
            end, pos = len(buf), 0
            answers = []
            while end - pos >= HEADER_SIZE:
                kind, number, size = unpack_header(buf, pos)
                stop = pos + HEADER_SIZE + size
                if stop > end:
                    break
                payload = buf[pos + HEADER_SIZE : stop]
                pos = stop
                if kind == ANSWER:
                    reschedule(pending.pop(number), outcome.Value(payload))
                elif direct:
                    body = answer(payload.decode())
                    answers.append(pack_header(ANSWER, number, len(body)))
                    answers.append(body)
                elif dispatch:
                    self.inbox.append((number, payload))
                else:
                    nursery.start_soon(self.serve_one, number, payload)
            rest = buf[pos:]
            if answers:
                stats[2] += len(answers) // 2
                self.push(b"".join(answers))
            if self.calls is not None and self.inbox:
                task, self.calls = self.calls, None
                reschedule(task)

    async def dispatch(self) -> None:
        """Answer the calls the reader queued, a batch per wake-up (``--answer dispatch``)."""
        while True:
            if not self.inbox:
                self.calls = current_task()
                await wait_task_rescheduled(_abort)
            calls, self.inbox = self.inbox, []
            answers = []
            for number, aid in calls:
                body = answer(aid.decode())
                answers.append(pack_header(ANSWER, number, len(body)))
                answers.append(body)
            stats[2] += len(calls)
            self.push(b"".join(answers))

    async def serve_one(self, number: int, aid: bytes) -> None:
        """Answer one call in a task of its own (``--answer task``)."""
        body = answer(aid.decode())
        stats[2] += 1
        self.push(pack_header(ANSWER, number, len(body)) + body)


async def handle(
    index: int, processes: int, lanes: list[Lane | None], stream: trio.SocketStream
) -> None:
    """The yardstick's HTTP/1.1 keep-alive loop, forwarding the ids ``index`` does not own."""
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            path = line.split(b" ")[1].decode()
            parts = [p for p in path.split("/") if p]
            aid = parts[1] if len(parts) > 1 else "0"
            stats[0] += 1
            if processes == 1:
                body = answer(aid)
            else:
                key = aid.encode()
                owner = zlib.crc32(key) % processes
                if owner == index:
                    body = answer(aid)
                else:
                    stats[1] += 1
                    body = await lanes[owner].call(key)  # type: ignore[union-attr]
            await stream.send_all(RESPONSE_HEAD + str(len(body)).encode() + b"\r\n\r\n" + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def report_stats(index: int, directory: Path) -> None:
    """Write this worker's counters to ``directory/<index>`` on each SIGUSR1."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            temporary = directory / f".{index}.tmp"
            temporary.write_text(" ".join(map(str, stats)))
            temporary.rename(directory / str(index))


async def worker(
    index: int,
    processes: int,
    public: socket.socket,
    peers: dict[int, socket.socket],
    mode: str,
    stats_dir: Path | None,
) -> None:
    lanes: list[Lane | None] = [None] * processes
    async with trio.open_nursery() as nursery:
        if stats_dir is not None:
            nursery.start_soon(report_stats, index, stats_dir)
        for peer, sock in peers.items():
            lane = lanes[peer] = Lane(trio.socket.from_stdlib_socket(sock))
            nursery.start_soon(lane.write)
            nursery.start_soon(lane.read, mode, nursery)
            if mode == "dispatch":
                nursery.start_soon(lane.dispatch)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(public))
        owners = 1 if mode == "local" else processes  # local: as if alone
        await trio.serve_listeners(partial(handle, index, owners, lanes), [listener])


def listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(socket.SOMAXCONN)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--processes", "-n", type=int, default=1)
    parser.add_argument(
        "--answer", choices=["direct", "dispatch", "task", "local"], default="dispatch"
    )
    parser.add_argument("--stats", type=Path, help="directory for the counters on SIGUSR1")
    args = parser.parse_args()
    n: int = args.processes
    publics = [listening(args.port) for _ in range(n)]  # all bound before any worker runs
    pairs = {(i, j): socket.socketpair() for i in range(n) for j in range(i + 1, n)}

    def run(index: int) -> None:
        ends = {}  # peer -> this worker's end of their socket pair
        for (i, j), (low, high) in pairs.items():
            if index == i:
                ends[j] = low
            elif index == j:
                ends[i] = high
        trio.run(worker, index, n, publics[index], ends, args.answer, args.stats)

    if n == 1:
        run(0)
        return
    children = []
    for index in range(n):
        pid = os.fork()
        if pid == 0:
            with contextlib.suppress(KeyboardInterrupt):
                run(index)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, _: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in children:
        os.wait()


if __name__ == "__main__":
    main()
