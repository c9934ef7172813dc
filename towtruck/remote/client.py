"""The outside client on trio or asyncio: :func:`connect` and :class:`RemoteClient`.

Only httpx and anyio do the waiting here, so the same client runs in a trio program
and in an asyncio one (anyio finds out which at each call). What it decides, where a
call goes and what an answer means, is :mod:`towtruck.remote.view`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import httpx

from .view import ANSWER_GRACE_SECONDS, HEALTH_SECONDS, Attempt, RemoteStatistics, View

__all__ = ["RemoteClient", "connect"]

#: A call's deadline when neither ``connect`` nor ``invoke`` gives one: a node's
#: default ``call_timeout``.
DEFAULT_TIMEOUT: Final = 30.0
#: Seconds a view of the members serves before the next call refreshes it.
DEFAULT_REFRESH_INTERVAL: Final = 5.0
#: Seconds an idle connection is kept for reuse: below a node's ``keep_alive_timeout``
#: (5 s by default), so the client never sends on a connection the node is closing at
#: that moment (the request would be lost in flight, and could not safely be retried).
KEEPALIVE_SECONDS: Final = 2.0


# One pool of connections per member rather than one for all: httpx's pool, full,
# closes an idle connection to one node to open one to another, so calls spread over
# three nodes by 32 tasks opened a connection every fourth call; and it scans every
# connection it holds for each request. A pool per member keeps its connections, and a
# node that hangs holds only its own.


def limits(max_connections: int) -> httpx.Limits:
    """A pool of connections to one member: ``max_connections``, all kept alive
    between calls (one call per connection at a time)."""
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_SECONDS,
    )


@asynccontextmanager
async def connect(
    seeds: Iterable[str],
    *,
    cluster_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (sent to the node with each call)
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    max_connections: int = 100,
) -> AsyncIterator[RemoteClient]:
    """A client for calling actors from outside the cluster, for the block.

    The client learns the members from any seed that answers (``GET /health``),
    sends each call straight to the node that owns its actor, and learns again every
    ``refresh_interval`` seconds (lazily, on the next call) and after a member
    refused a connection. Entering does no I/O: the first call learns the members.

    Args:
        seeds: ``host:port`` of one or more nodes (a dead one is skipped).
        cluster_key: The cluster's key, sent with every request, if it has one.
        timeout: The default deadline of a call, in seconds.
        refresh_interval: Seconds a view of the members serves.
        max_connections: Connections open at once to each member.

    Raises:
        InvalidAddress: a seed is not ``host:port``.
        ValueError: no seeds, or a bad ``refresh_interval``.

    Resource handling: the connections the client opened are closed when the block
    ends; calls still under way in other tasks then fail. Runs on trio or asyncio.
    """
    client = RemoteClient(View(seeds, refresh_interval, cluster_key), timeout, max_connections)
    try:
        yield client
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


class RemoteClient:
    """Calls actors from outside the cluster, placed as the nodes place them (see
    :func:`connect`, which makes one)."""

    def __init__(self, view: View, timeout: float, max_connections: int) -> None:
        self._view = view
        self._timeout = timeout
        self._limits = limits(max_connections)
        self._pools: dict[str, httpx.AsyncClient] = {}
        # The refresh under way, that calls with no view yet wait for.
        self._refreshing: anyio.Event | None = None

    def statistics(self) -> RemoteStatistics:
        """The client's figures (see :class:`RemoteStatistics`)."""
        return self._view.statistics()

    async def aclose(self) -> None:
        """Close every connection (:func:`connect` does, at the end of its block)."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()

    def _pool(self, member: str) -> httpx.AsyncClient:
        """The connections to ``member``, made on first use."""
        pool = self._pools.get(member)
        if pool is None:
            pool = httpx.AsyncClient(
                base_url=self._view.url(member), limits=self._limits, trust_env=False
            )
            self._pools[member] = pool
        return pool

    async def invoke(
        self,
        actor_id: str | int,
        method: str,
        data: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the node must know it too)
    ) -> Any:
        """Call ``method`` on actor ``actor_id`` with ``data``; return its answer.

        The call goes to the member that owns the actor. A member that refuses the
        connection is left for the next by placement; a 503 (the call did not run) is
        sent again after the node's ``Retry-After``, while the deadline allows. Nothing
        else is retried: after a 502, a 504 or a lost connection the call may have run.

        Args:
            actor_id: The actor's id.
            method: The name of one of its public methods.
            data: A JSON-able value, the method's ``data``.
            timeout: The call's deadline in seconds (the client's default if None). The
                node keeps the sooner of it and its ``call_timeout``.

        Raises:
            TowtruckError: the node's error, as the same class of the tree
                (:class:`~towtruck.MethodNotFound`, :class:`~towtruck.ActorError`...);
                :class:`~towtruck.CallTimeout` when the deadline passed,
                :class:`~towtruck.CallInterrupted` when the connection was lost under
                way, :class:`~towtruck.PeerUnavailable` when no member took it.
            InvalidActorId: a bad id (before anything is sent).
            TypeError: ``data`` is not JSON-able (before anything is sent).

        A checkpoint. Cancelled halfway, the call may or may not have run.
        """
        now = anyio.current_time()
        seconds = self._timeout if timeout is None else timeout
        call = Attempt(self._view, actor_id, method, data, seconds, now)
        # A bound on the whole call, waits and retries included: httpx bounds each
        # read, not an answer that trickles in.
        with anyio.move_on_after(call.deadline + ANSWER_GRACE_SECONDS - now):
            return await self._send(call)
        raise call.timed_out(call.tried[-1] if call.tried else None)

    async def refresh(self) -> None:
        """Learn the members now from ``/health`` (the client does it by itself; this
        is for a caller that knows the cluster changed). If no member answers, the
        view stays as it was. A checkpoint; bounded by a few seconds per member."""
        await self._refresh(anyio.current_time() + HEALTH_SECONDS)

    async def _send(self, call: Attempt) -> Any:
        view = self._view
        while True:
            now = anyio.current_time()
            if view.due(now):
                await self._refresh_for(call.deadline)
                now = anyio.current_time()
            member = call.target(now)
            connect, read = call.waits(now)
            try:
                response = await self._pool(member).post(
                    call.path,
                    content=call.body,
                    headers=call.headers(now),
                    timeout=httpx.Timeout(read, connect=connect),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout):
                call.refused(member, anyio.current_time())
                continue
            except httpx.TimeoutException as exc:
                raise call.timed_out(member) from exc
            except httpx.TransportError as exc:
                raise call.interrupted(member, exc) from exc
            if response.status_code == 200:
                return call.result(response.content)
            wait = call.answered(
                response.status_code,
                response.headers.get("retry-after"),
                response.content,
                anyio.current_time(),
            )
            await anyio.sleep(wait)

    async def _refresh_for(self, deadline: float) -> None:
        """Refresh the view before a call: one task refreshes, the others go on with
        the view they have, or wait for it if there is none yet."""
        if self._refreshing is None:
            await self._refresh(deadline)
        elif not self._view.members:
            with anyio.move_on_after(deadline - anyio.current_time()):
                await self._refreshing.wait()

    async def _refresh(self, deadline: float) -> None:
        view = self._view
        self._refreshing = done = anyio.Event()
        try:
            for member in view.sources(anyio.current_time()):
                left = min(deadline - anyio.current_time(), HEALTH_SECONDS)
                if left <= 0:
                    break
                try:
                    response = await self._pool(member).get(
                        "/health", headers=view.headers, timeout=left
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    view.refused(member, anyio.current_time())
                    continue
                except httpx.HTTPError:
                    continue
                if response.status_code == 200 and view.learned(
                    _json(response), anyio.current_time()
                ):
                    return
            view.unlearned(anyio.current_time())
        finally:
            self._refreshing = None
            done.set()


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None
