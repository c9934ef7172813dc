"""Talking to other nodes over HTTP, with httpx on persistent connections.

This is the one module of the cluster that does I/O; the rest sees it through the
small :class:`~towtruck.directory.PeerClient` interface, so the forwarding of calls can
move to another transport (a multiplexed connection) without touching the rest.
httpx errors are translated here, once, into towtruck's: a connection that could not
be made is :class:`PeerUnavailable` with ``delivered=False`` (the call certainly did
not run, so the peer is taken out of placement at once); a timeout is
:class:`CallTimeout`; an error body from the peer is rebuilt as the same towtruck
error (:func:`towtruck.errors.from_payload`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
import trio

from . import codec
from .errors import CallTimeout, InvalidJSON, PeerUnavailable, TowtruckError, from_payload
from .router import Router
from .runtime import Runtime

__all__ = ["HttpPeers", "open_router"]

_JSON: Final = {"content-type": "application/json"}
# Connections kept open per node for forwarding; more wait for one to be free.
_LIMITS: Final = httpx.Limits(max_connections=256, max_keepalive_connections=64)


class HttpPeers:
    """This node's HTTP client for its peers. Close it with :meth:`aclose`.

    Args:
        cluster_headers: Sent with every request (the cluster's credentials).
    """

    def __init__(self, cluster_headers: dict[str, str] | None = None) -> None:
        self._client = httpx.AsyncClient(
            limits=_LIMITS, timeout=None, headers=cluster_headers, trust_env=False
        )

    async def aclose(self) -> None:
        """Close every connection."""
        await self._client.aclose()

    async def forward(self, peer: str, envelope: bytes, timeout: float) -> bytes:
        """POST a call's envelope to ``peer``'s ``/cluster/forward``; the answer is the
        result as JSON. See :class:`~towtruck.directory.PeerClient` for errors."""
        return await self._request("POST", peer, "/cluster/forward", envelope, timeout)

    async def post(self, peer: str, path: str, payload: Any, timeout: float) -> Any:
        """POST JSON, return the JSON answer."""
        return codec.loads(await self._request("POST", peer, path, codec.dumps(payload), timeout))

    async def get(self, peer: str, path: str, timeout: float) -> Any:
        """GET, return the JSON answer."""
        return codec.loads(await self._request("GET", peer, path, None, timeout))

    async def _request(
        self, verb: str, peer: str, path: str, body: bytes | None, timeout: float
    ) -> bytes:
        try:
            with trio.fail_after(max(timeout, 0.0)):
                response = await self._client.request(
                    verb, f"http://{peer}{path}", content=body, headers=_JSON if body else None
                )
        except trio.TooSlowError:
            raise CallTimeout(f"{peer} did not answer in time", peer=peer) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise PeerUnavailable(
                f"could not connect to {peer}: {exc or type(exc).__name__}", peer=peer, delivered=False
            ) from exc
        except httpx.TransportError as exc:
            raise PeerUnavailable(
                f"lost the connection to {peer}: {exc or type(exc).__name__}", peer=peer
            ) from exc
        if response.status_code == 200:
            return response.content
        try:
            payload = codec.loads(response.content)
        except InvalidJSON:
            payload = None
        error: TowtruckError = from_payload(payload, response.status_code)
        raise error


@asynccontextmanager
async def open_router(runtime: Runtime, me: str) -> AsyncIterator[Router]:
    """Make ``runtime`` a clustered node reachable at ``me`` (its ``host:port``) for the
    duration of the block: its calls go through a :class:`~towtruck.router.Router` that
    talks to peers over HTTP. Enter it before the runtime serves (the router adds its
    loops to the runtime's services) and call ``router.start(peers)`` once HTTP is up.
    Closes every connection to peers on the way out."""
    peers = HttpPeers()
    try:
        yield Router(runtime, me, peers)
    finally:
        with trio.CancelScope(shield=True):
            await peers.aclose()
