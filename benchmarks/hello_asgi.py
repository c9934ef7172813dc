"""The HTTP benchmark's reference: a raw ASGI app answering every request with the
greeter's small JSON body. Served by ``hypercorn --worker-class trio hello_asgi.py:app``."""

from __future__ import annotations

from typing import Any

_BODY = b'{"hello":"from actor 1"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BODY))]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
