"""A small HTTP/1.1 load generator, the fallback when ``wrk`` is not installed.

Like ``wrk -t1 -c C -d D --latency``: C keep-alive connections send GETs back to back
for D seconds; it prints one JSON line with the request rate and latency percentiles.
It runs in its own process (trio, raw sockets), so it competes with the server for CPU
as wrk would, though it needs more CPU per request than wrk does.

    python benchmarks/loadgen.py http://127.0.0.1:8080/invoke/1/hello -c 50 -d 5
    python benchmarks/loadgen.py http://127.0.0.1:8080 --random-ids 10000
    python benchmarks/loadgen.py http://127.0.0.1:8080 --ids-file ids.txt  # one id a line
    python benchmarks/loadgen.py http://127.0.0.1:8080 --new-ids run7-  # run7-1, run7-2...
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import trio


@dataclass
class Tally:
    """What the connections measured: seconds per answered request, failed statuses."""

    latencies: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


async def connection(
    host: str, port: int, path: Callable[[], str], end: float, tally: Tally
) -> None:
    """Send requests on one connection until ``end``; record them in ``tally``."""
    stream = await trio.open_tcp_stream(host, port)
    buffer = bytearray()
    async with stream:
        with trio.move_on_at(end):
            while True:
                request = f"GET {path()} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
                start = time.perf_counter()
                await stream.send_all(request)
                status = await read_response(stream, buffer)
                tally.latencies.append(time.perf_counter() - start)
                if status >= 400:
                    tally.failed.append(status)


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> int:
    """Read one response with a Content-Length body off ``stream``; return its status."""
    while (head_end := buffer.find(b"\r\n\r\n")) < 0:
        await receive_into(stream, buffer)
    head = bytes(buffer[:head_end]).lower()
    status = int(head[9:12])
    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    while len(buffer) < head_end + 4 + length:
        await receive_into(stream, buffer)
    del buffer[: head_end + 4 + length]
    return status


async def receive_into(stream: trio.SocketStream, buffer: bytearray) -> None:
    data = await stream.receive_some(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    buffer += data


async def generate(
    url: str,
    *,
    connections: int,
    duration: float,
    random_ids: int,
    ids: list[str],
    new_ids: str,
) -> dict[str, float]:
    """Run the load; return requests, seconds, rps, p50_ms, p99_ms, failed.

    Each request calls hello on a new actor, ``new_ids`` followed by 1, 2, 3..., if
    that is set, else on a random actor among ``ids`` if there are any, else among
    1..``random_ids`` if that is set; otherwise every request GETs ``url``.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if new_ids:
        counter = itertools.count(1)

        def path() -> str:
            return f"/invoke/{new_ids}{next(counter)}/hello"
    elif ids:
        choose = random.Random().choice

        def path() -> str:
            return f"/invoke/{choose(ids)}/hello"
    elif random_ids:
        pick = random.Random().randint

        def path() -> str:
            return f"/invoke/{pick(1, random_ids)}/hello"
    else:
        fixed = parts.path or "/"

        def path() -> str:
            return fixed

    tally = Tally()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(connection, host, port, path, start + duration, tally)
    seconds = trio.current_time() - start
    latencies = sorted(tally.latencies)
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)],
        "failed": len(tally.failed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--random-ids", type=int, default=0, help="GET /invoke/{random id}/hello")
    parser.add_argument("--ids-file", help="pick the random ids among this file's lines")
    parser.add_argument("--new-ids", default="", help="GET /invoke/{this}{1, 2, 3...}/hello")
    args = parser.parse_args()
    options = {
        "connections": args.connections,
        "duration": args.duration,
        "random_ids": args.random_ids,
        "ids": Path(args.ids_file).read_text().split() if args.ids_file else [],
        "new_ids": args.new_ids,
    }
    print(json.dumps(trio.run(partial(generate, args.url, **options))))


if __name__ == "__main__":
    main()
