"""The outside client for code that does not run an event loop: :class:`SyncClient`.

For plain scripts and the threads of a web app (Django, Flask): the same placement,
retries and errors as :class:`~towtruck.remote.RemoteClient`, decided by
:mod:`towtruck.remote.view`, over httpx's blocking client. One client may be shared
by many threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import httpx

from .client import DEFAULT_REFRESH_INTERVAL, DEFAULT_TIMEOUT, limits
from .view import HEALTH_SECONDS, Attempt, RemoteStatistics, View

__all__ = ["SyncClient"]


class SyncClient:
    """Calls actors from outside the cluster, blocking the calling thread.

    ``with towtruck.SyncClient(["host:port"]) as client: client.invoke(id, method,
    data)``. The arguments and the behaviour are :func:`towtruck.connect`'s.

    Raises:
        InvalidAddress: a seed is not ``host:port``.
        ValueError: no seeds, or a bad ``refresh_interval``.

    Resource handling: :meth:`close` (or leaving the ``with`` block) closes the
    connections. Making one does no I/O: the first call learns the members.
    """

    def __init__(
        self,
        seeds: Iterable[str],
        *,
        cluster_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        max_connections: int = 100,
    ) -> None:
        self._view = View(seeds, refresh_interval, cluster_key)
        self._timeout = timeout
        self._limits = limits(max_connections)
        # One pool per member (see towtruck.remote.client), made on first use.
        self._pools: dict[str, httpx.Client] = {}
        self._making = threading.Lock()
        # Held by the thread refreshing the view; the others go on with theirs.
        self._refreshing = threading.Lock()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        with self._making:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    def _pool(self, member: str) -> httpx.Client:
        pool = self._pools.get(member)
        if pool is None:
            with self._making:
                pool = self._pools.get(member)
                if pool is None:
                    pool = httpx.Client(
                        base_url=self._view.url(member), limits=self._limits, trust_env=False
                    )
                    self._pools[member] = pool
        return pool

    def statistics(self) -> RemoteStatistics:
        """The client's figures (see :class:`RemoteStatistics`)."""
        return self._view.statistics()

    def invoke(
        self, actor_id: str | int, method: str, data: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Call ``method`` on actor ``actor_id`` with ``data``; return its answer.

        As :meth:`towtruck.remote.RemoteClient.invoke`, blocking. Every wait ends by
        the deadline (and the grace for the node's own 504); a node that trickles its
        answer in could stretch that, since httpx bounds each read, not the whole.
        """
        view = self._view
        seconds = self._timeout if timeout is None else timeout
        call = Attempt(view, actor_id, method, data, seconds, time.monotonic())
        while True:
            now = time.monotonic()
            if view.due(now):
                self._refresh_for(call.deadline)
                now = time.monotonic()
            member = call.target(now)
            connect, read = call.waits(now)
            try:
                response = self._pool(member).post(
                    call.path,
                    content=call.body,
                    headers=call.headers(now),
                    timeout=httpx.Timeout(read, connect=connect),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout):
                call.refused(member, time.monotonic())
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
                time.monotonic(),
            )
            time.sleep(wait)

    def refresh(self) -> None:
        """Learn the members now (see :meth:`towtruck.remote.RemoteClient.refresh`)."""
        with self._refreshing:
            self._refresh(time.monotonic() + HEALTH_SECONDS)

    def _refresh_for(self, deadline: float) -> None:
        """One thread refreshes; the others go on with the view they have, or wait
        for it (until the deadline) if there is none yet."""
        if self._view.members:
            acquired = self._refreshing.acquire(blocking=False)
        else:
            acquired = self._refreshing.acquire(timeout=max(deadline - time.monotonic(), 0.0))
        if not acquired:
            return
        try:
            if self._view.due(time.monotonic()):  # nobody refreshed while we waited
                self._refresh(deadline)
        finally:
            self._refreshing.release()

    def _refresh(self, deadline: float) -> None:
        view = self._view
        for member in view.sources(time.monotonic()):
            left = min(deadline - time.monotonic(), HEALTH_SECONDS)
            if left <= 0:
                break
            try:
                response = self._pool(member).get("/health", headers=view.headers, timeout=left)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                view.refused(member, time.monotonic())
                continue
            except httpx.HTTPError:
                continue
            try:
                health = response.json() if response.status_code == 200 else None
            except ValueError:
                health = None
            if view.learned(health, time.monotonic()):
                return
        view.unlearned(time.monotonic())
