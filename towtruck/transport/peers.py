"""Talking to other nodes over HTTP, with httpx on persistent connections.

This is the one module of the cluster that does I/O; the rest sees it through the
small :class:`~towtruck.cluster.directory.PeerClient` interface, so the forwarding of calls can
move to another transport (a multiplexed connection) without touching the rest.
httpx errors are translated here, once, into towtruck's: a connection that could not
be made is :class:`PeerUnavailable` with ``delivered=False`` (the call certainly did
not run, so the peer is taken out of placement at once); an error body from the peer
is rebuilt as the same towtruck error (:func:`towtruck.errors.from_payload`). Requests
have no timeouts of their own: the caller's cancel scope bounds them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
import trio

from .. import codec
from ..cluster import placement, wire
from ..cluster.credentials import key_headers
from ..cluster.directory import Directory, PeerClient
from ..cluster.gossip import Gossip
from ..cluster.health import LocalHealth
from ..cluster.membership import Membership
from ..cluster.registrar import Registrar
from ..cluster.router import Router
from ..cluster.table import MembershipTable, open_table
from ..errors import (
    CallInterrupted,
    CallTimeout,
    InvalidJSON,
    PeerUnavailable,
    TowtruckError,
    from_payload,
)
from ..runtime import Runtime
from ..storage.base import BUCKETS
from .lanes import Lanes, open_lanes

__all__ = ["HttpPeers", "assemble", "open_router", "stop_member"]

_JSON: Final = {"content-type": "application/json"}
# Forwarded calls and the cluster's own messages (heartbeats, filters, queries) use
# separate connection pools, so a flood of forwarded calls can never hold up a
# heartbeat long enough for a healthy peer to be taken for down.
_CALL_LIMITS: Final = httpx.Limits(max_connections=256, max_keepalive_connections=64)
_CONTROL_LIMITS: Final = httpx.Limits(max_connections=32, max_keepalive_connections=16)


class HttpPeers:
    """This node's client for its peers: calls on lanes (HTTP requests to peers that
    take none), the rest over HTTP. Close it with :meth:`aclose`.

    Args:
        lanes: The node's lanes, or None to forward calls as HTTP requests.
        cluster_headers: Sent with every request (the cluster's credentials).
    """

    def __init__(
        self, lanes: Lanes | None = None, cluster_headers: dict[str, str] | None = None
    ) -> None:
        self._lanes = lanes
        self._calls, self._control = (
            httpx.AsyncClient(limits=limits, timeout=None, headers=cluster_headers, trust_env=False)
            for limits in (_CALL_LIMITS, _CONTROL_LIMITS)
        )

    def prune(self, keep: set[str]) -> None:
        """Close the lanes to peers not in ``keep``."""
        if self._lanes is not None:
            self._lanes.close(keep)

    def interrupt(self, peer: str) -> None:
        """Close the lane to ``peer``: the calls on it fail as interrupted."""
        if self._lanes is not None:
            self._lanes.interrupt(peer)

    def stalled(self, peer: str, after: float) -> bool:
        """Whether calls on the lane to ``peer`` have had no answer, nor the peer any
        sign of life on it, for ``after`` seconds (it probes the peer meanwhile)."""
        return self._lanes is not None and self._lanes.stalled(peer, after)

    async def aclose(self) -> None:
        """Close every connection."""
        await self._calls.aclose()
        await self._control.aclose()

    async def forward(self, peer: str, envelope: bytes, deadline: float) -> bytes:
        """Send a call's envelope to ``peer`` on a lane, or as ``POST /cluster/forward``
        if it takes no lanes; the answer is the result as JSON. See
        :class:`~towtruck.cluster.directory.PeerClient` for errors."""
        if self._lanes is not None:
            lane = self._lanes.ready(peer)
            if lane is not None:  # the usual way, in as few steps as it takes
                return await lane.call(envelope, deadline)
            answer = await self._lanes.call(peer, envelope, deadline)
            if answer is not None:
                return answer
        with trio.move_on_at(deadline):
            return await self._request(
                self._calls, "POST", peer, wire.FORWARD_PATH.decode(), envelope, call=True
            )
        raise CallTimeout(f"no answer from {peer} by the call's deadline", node=peer)

    async def post(self, peer: str, path: str, payload: Any) -> Any:
        """POST JSON, return the JSON answer."""
        body = codec.dumps(payload)
        return codec.loads(await self._request(self._control, "POST", peer, path, body))

    async def get(self, peer: str, path: str) -> Any:
        """GET, return the JSON answer."""
        return codec.loads(await self._request(self._control, "GET", peer, path, None))

    async def _request(
        self,
        client: httpx.AsyncClient,
        verb: str,
        peer: str,
        path: str,
        body: bytes | None,
        *,
        call: bool = False,
    ) -> bytes:
        """One request; ``call``: it carries a call, whose loss under way is reported
        as :class:`CallInterrupted` (it may have run), not as :class:`PeerUnavailable`."""
        try:
            request = client.build_request(verb, f"http://{peer}{path}")
            if body is not None:
                request.headers.update({**_JSON, "content-length": str(len(body))})
                request.stream = _Body(body)
            response = await client.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.InvalidURL) as exc:
            raise PeerUnavailable(
                f"could not connect to {peer}: {exc or type(exc).__name__}",
                peer=peer,
                delivered=False,
            ) from exc
        except httpx.HTTPError as exc:
            lost = f"lost the connection to {peer}: {exc or type(exc).__name__}"
            if call:
                raise CallInterrupted(lost, peer=peer) from exc
            raise PeerUnavailable(lost, peer=peer) from exc
        if response.status_code == 200:
            return response.content
        try:
            payload = codec.loads(response.content)
        except InvalidJSON:
            payload = None
        error: TowtruckError = from_payload(payload, response.status_code)
        raise error


class _Body(httpx.AsyncByteStream):
    """A request body sent in one piece.

    httpx wraps ``content=bytes`` in a stream whose ``__aiter__`` is an async generator;
    when a peer dies mid-request the generator is left suspended, and its finalizer
    complains on stderr ("Exception ignored in ... ByteStream.__aiter__"). A plain
    iterator has nothing to finalize.
    """

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


@asynccontextmanager
async def open_router(
    runtime: Runtime,
    me: str,
    cluster_key: str | None,
    local_lanes: Mapping[str, str] | None = None,
) -> AsyncIterator[Router]:
    """Make ``runtime`` a clustered node reachable at ``me`` (its ``host:port``) for the
    duration of the block: its calls go through a :class:`~towtruck.cluster.router.Router` that
    talks to peers over HTTP. Enter it before the runtime serves (the router adds its
    loops to the runtime's services) and call ``router.start(peers)`` once HTTP is up.
    Every request to a peer carries ``cluster_key`` (if set). ``local_lanes``: Unix
    domain sockets of peers on this host (see :func:`~towtruck.transport.lanes.open_lanes`).
    Closes every connection to peers on the way out."""
    headers = key_headers(cluster_key)
    settings = runtime.settings
    health = LocalHealth(settings.heartbeat_interval)
    # A peer slower than the failure detector to accept a lane is as good as down.
    misses = settings.heartbeat_misses
    async with open_lanes(
        headers,
        open_timeout=lambda: settings.heartbeat_interval * misses * health.multiplier,
        paths=local_lanes,
        retry_after=settings.lane_retry_after,
    ) as lanes:
        peers = HttpPeers(lanes, headers)
        table = await open_table(settings.membership, timeout=settings.store_timeout)
        try:
            router = assemble(runtime, me, peers, health=health)
            if table is not None:
                register(runtime, router, table)
            yield router
        finally:
            with trio.CancelScope(shield=True):
                await peers.aclose()
                if table is not None:
                    await table.aclose()


def assemble(
    runtime: Runtime,
    me: str,
    peers: PeerClient,
    *,
    wall_clock: Callable[[], int] = time.time_ns,
    health: LocalHealth | None = None,
) -> Router:
    """A clustered node's parts, wired once: its view, its directory, the membership
    protocol and the call path; the runtime's calls then go through the router.
    ``wall_clock``: what membership versions start from (see :class:`Membership`);
    ``health``: the failure detector's (shared with the lanes' opening timeout)."""
    settings = runtime.settings
    membership = Membership(
        me,
        misses_allowed=settings.heartbeat_misses,
        clock=trio.current_time,
        wall_clock=wall_clock,
    )
    # By default a down peer is asked about ids for ten heartbeats: long enough to
    # outlast a stall, short enough that a dead peer soon costs activations nothing.
    directory = Directory(
        runtime.catalog,
        peers,
        membership,
        suspicion=settings.suspicion or 10 * settings.heartbeat_interval,
        query_timeout=settings.query_timeout,
        strict=settings.partition == "keep-majority",
    )
    runtime.catalog.observer = directory  # it keeps this node's filter
    gossip = Gossip(me, settings, runtime.catalog, membership, directory, peers, health)
    router = Router(me, runtime.catalog, membership, directory, gossip, peers)
    runtime.router = router
    # Reminders' buckets are placed as actors are: each node loads its own.
    buckets = placement.Keys([f"reminders/{bucket}" for bucket in range(BUCKETS)])
    runtime.reminders.owns = lambda bucket: bucket in buckets.owned(me, membership.placement())
    for service in gossip.services():
        runtime.add_service(service)
    return router


def register(runtime: Runtime, router: Router, table: MembershipTable) -> None:
    """Keep ``router``'s node in ``table`` (see :mod:`towtruck.cluster.registrar`)."""
    settings = runtime.settings
    registrar = Registrar(
        router.me,
        table,
        router.membership,
        runtime.catalog,
        interval=settings.heartbeat_interval,
        vote_after=settings.suspicion or 10 * settings.heartbeat_interval,
        # A vote counts for as long as a peer may take to notice a death and vote too.
        vote_window=4 * settings.heartbeat_interval * settings.heartbeat_misses,
    )
    registrar.gossip = router.gossip
    router.gossip.registrar = registrar
    # Removed, the node would serve alone until the table's rows join it back to its
    # peers: meanwhile it would activate actors they hold.
    router.membership.forgets_when_removed = False
    runtime.add_service(registrar.run)


async def stop_member(runtime: Runtime, router: Router | None) -> None:
    """Stop a node's runtime gracefully, as every way of running a node does: leave the
    cluster first, so the peers stop placing actors here, then stop the runtime, its
    calls sent on to their new owners meanwhile (see :meth:`Runtime.stop`)."""
    runtime.stop_soon()
    elsewhere = await router.gossip.leave() if router is not None else False
    await runtime.stop(route_elsewhere=elsewhere)
