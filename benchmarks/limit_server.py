"""Reference 'physical limit' server: minimal HTTP/1.1 keep-alive on raw trio sockets.

Answers GET /invoke/<id>/<method> with {"hello": "from actor <id>"} from a dict of plain
objects, like the seed does. Not a product; a yardstick measured in the same run as towtruck.

A copy of issue 10's yardstick, ``../shared/bench/limit_server.py``, formatted by ruff:
the code is the same. ``benchmarks/http_invoke.py`` runs it (``--yardstick PATH`` runs
another copy).
"""

import json
import sys

import trio

actors = {}


class A:
    __slots__ = ("id",)

    def __init__(self, id):
        self.id = id


async def handle(stream):
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
            a = actors.get(aid)
            if a is None:
                a = actors[aid] = A(aid)
            body = json.dumps({"hello": "from actor " + a.id}).encode()
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def main(port):
    await trio.serve_tcp(handle, port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
