"""What the outside client knows of the cluster, and what each answer means: no I/O.

The two clients (:class:`~towtruck.remote.RemoteClient` on trio or asyncio,
:class:`~towtruck.remote.SyncClient` in threads) differ only in how they wait; what
they decide is here, once, so both place, retry and report errors alike:

- :class:`View`: the members actors are placed on, learned from a node's ``/health``,
  which member owns an id (the nodes' own rendezvous function over the same members),
  and which members recently refused a connection;
- :class:`Attempt`: one call's way through the members, from its first try to its
  answer or its error.

Time is whatever clock the client reads (trio's or asyncio's through anyio, or
``time.monotonic``): every method takes ``now``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, Final
from urllib.parse import quote

from .. import codec
from ..cluster import placement
from ..cluster.wire import CLUSTER_KEY_HEADER
from ..errors import (
    CallInterrupted,
    CallTimeout,
    InternalError,
    InvalidJSON,
    NodeStopping,
    PeerUnavailable,
    TowtruckError,
    from_payload,
)
from ..ids import Address, check_actor_id

__all__ = ["TIMEOUT_HEADER", "Attempt", "RemoteStatistics", "View"]

#: The request header that carries a call's deadline, in seconds, to the node (which
#: keeps the sooner of it and its own ``call_timeout``).
TIMEOUT_HEADER: Final = "towtruck-timeout"
#: How long the client waits past the deadline it sent, for the node's own 504 (which
#: says where the call was) to arrive before giving up on its own.
ANSWER_GRACE_SECONDS: Final = 0.5
#: The longest a ``/health`` request for the view may take.
HEALTH_SECONDS: Final = 2.0
#: After no member answered ``/health``, the next try is this much later (not on
#: every call), the view in hand serving meanwhile.
REFRESH_RETRY_SECONDS: Final = 1.0
#: Waits between tries of a refused call: ``Retry-After`` when the node sent one (a
#: towtruck node sends 1 s), this when it did not, never less than the floor, so a
#: node that answers ``Retry-After: 0`` cannot make a busy loop.
DEFAULT_RETRY_AFTER: Final = 1.0
MIN_RETRY_AFTER: Final = 0.05
# The members a node reports that carry actors (see Membership.placement): itself and
# the peers that answer its heartbeats; "down" and "removed" ones carry none.
_PLACED_STATES: Final = frozenset({"self", "alive"})


@dataclasses.dataclass(frozen=True)
class RemoteStatistics:
    """A client's figures since it was made.

    Attributes:
        members: The members actors are placed on, as last learned (empty before the
            first ``/health`` answer).
        calls: Calls made with :meth:`invoke`, answered or not.
        retries: Calls sent again after a 503 (they had not run).
        refused: Connections a member refused or did not accept in time.
        refreshes: Views learned from a ``/health`` answer.
    """

    members: tuple[str, ...]
    calls: int
    retries: int
    refused: int
    refreshes: int


class View:
    """The cluster as the client sees it (see the module's docstring).

    Args:
        seeds: ``host:port`` of nodes to learn the members from; any one that
            answers is enough.
        refresh_interval: Seconds a view serves before the next call refreshes it.
        cluster_key: Sent with every request in ``towtruck-cluster-key``, when given.

    Raises:
        InvalidAddress: a seed is not ``host:port``.
        ValueError: no seeds, or ``refresh_interval`` is not a positive number.
    """

    def __init__(
        self, seeds: Iterable[str], refresh_interval: float, cluster_key: str | None
    ) -> None:
        parsed = [Address.parse(seed) for seed in ([seeds] if isinstance(seeds, str) else seeds)]
        if not parsed:
            raise ValueError("connect needs at least one seed: a node's host:port")
        if not refresh_interval > 0 or math.isinf(refresh_interval):
            raise ValueError(f"refresh_interval must be positive seconds, not {refresh_interval}")
        self.seeds = tuple(dict.fromkeys(str(address) for address in parsed))
        self.refresh_interval = refresh_interval
        self.headers: dict[str, str] = {"content-type": "application/json"}
        if cluster_key is not None:
            self.headers[CLUSTER_KEY_HEADER] = cluster_key
        #: The placed members, sorted: whom ids are hashed over.
        self.members: tuple[str, ...] = ()
        self._urls: dict[str, str] = {}
        # Members that refused a connection lately, with when: skipped for a
        # refresh_interval (the nodes' own view may still call them alive for a few
        # heartbeats), unless nothing else is left.
        self._refused: dict[str, float] = {}
        self._refresh_at = -math.inf
        self.calls = self.retries = self.refused_count = self.refreshes = 0

    def statistics(self) -> RemoteStatistics:
        """The client's figures (see :class:`RemoteStatistics`)."""
        return RemoteStatistics(
            self.members, self.calls, self.retries, self.refused_count, self.refreshes
        )

    def url(self, member: str) -> str:
        """``http://host:port`` of a member or seed."""
        url = self._urls.get(member)
        if url is None:
            url = self._urls[member] = Address.parse(member).url
        return url

    # Learning the members.

    def due(self, now: float) -> bool:
        """Whether the next call should refresh the view first."""
        return now >= self._refresh_at

    def sources(self, now: float) -> list[str]:
        """Whom to ask for ``/health``, in order: the members, then the seeds, those
        that refused lately last."""
        candidates = list(dict.fromkeys([*self.members, *self.seeds]))
        return sorted(candidates, key=lambda member: self._skipped(member, now))

    def learned(self, health: object, now: float) -> bool:
        """Take the members from a ``/health`` answer; False if it lists none."""
        listed = health.get("members") if isinstance(health, dict) else None
        if not isinstance(listed, list):
            return False
        placed = set()
        for member in listed:
            if isinstance(member, dict) and member.get("state") in _PLACED_STATES:
                address = member.get("address")
                if isinstance(address, str):
                    placed.add(address)
        if not placed:
            return False
        self.members = tuple(sorted(placed))
        self._refresh_at = now + self.refresh_interval
        self.refreshes += 1
        return True

    def unlearned(self, now: float) -> None:
        """No member answered ``/health``: keep the view, try again a little later."""
        self._refresh_at = now + min(REFRESH_RETRY_SECONDS, self.refresh_interval)

    def refused(self, member: str, now: float) -> None:
        """``member`` refused a connection: skip it for a while, refresh soon."""
        self._refused[member] = now
        self.refused_count += 1
        self._refresh_at = now

    def refresh_soon(self, now: float) -> None:
        """Have the next call refresh the view (a node said a member is gone or
        going)."""
        self._refresh_at = min(self._refresh_at, now)

    def _skipped(self, member: str, now: float) -> bool:
        at = self._refused.get(member)
        if at is None:
            return False
        if now - at >= self.refresh_interval:
            del self._refused[member]
            return False
        return True

    # Placing a call.

    def target(self, actor_id: str, tried: Sequence[str], now: float) -> str | None:
        """Where a call for ``actor_id`` goes next: its owner among the placed members
        (neither tried by this call nor refusing lately), else any member or seed not
        tried yet, else None.

        Leaving out a member that refused gives the owner the nodes will pick once
        they see it gone too: rendezvous hashing moves only that member's ids, each
        to the member with the next score.
        """
        members = [m for m in self.members if m not in tried and not self._skipped(m, now)]
        if members:
            return members[0] if len(members) == 1 else placement.owner(actor_id, members)
        rest = [m for m in (*self.members, *self.seeds) if m not in tried]
        return rest[0] if rest else None


class Attempt:
    """One call, from its first try to its answer: where to send it, what to send,
    and what each outcome means.

    Raises:
        InvalidActorId: ``actor_id`` is not a valid id.
        TypeError: ``data`` holds something JSON cannot carry.
        ValueError: ``method`` is empty or ``timeout`` is not positive.
    """

    __slots__ = ("actor_id", "body", "deadline", "method", "path", "tried", "view")

    def __init__(
        self,
        view: View,
        actor_id: str | int,
        method: str,
        data: Any,
        timeout: float,
        now: float,
    ) -> None:
        if not isinstance(method, str) or not method:
            raise ValueError(f"a method is a name, not {method!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, not {timeout}")
        self.view = view
        self.actor_id = check_actor_id(actor_id)
        self.method = method
        self.path = f"/invoke/{_segment(self.actor_id)}/{_segment(method)}"
        self.body = codec.dumps(data)
        self.deadline = now + timeout
        self.tried: list[str] = []
        view.calls += 1

    def target(self, now: float) -> str:
        """The member to send the call to next.

        Raises:
            CallTimeout: the deadline has passed.
            PeerUnavailable: every member and seed refused a connection.
        """
        if now >= self.deadline:
            raise self.timed_out(None)
        member = self.view.target(self.actor_id, self.tried, now)
        if member is None:
            raise PeerUnavailable(
                f"no node of the cluster accepted a connection for the call to"
                f" {self.method!r} on actor {self.actor_id!r}",
                actor=self.actor_id,
                method=self.method,
                tried=list(self.tried),
                delivered=False,
            )
        return member

    def headers(self, now: float) -> dict[str, str]:
        """The request's headers: the client's, and the time the call has left."""
        return {**self.view.headers, TIMEOUT_HEADER: f"{max(self.deadline - now, 0.001):.3f}"}

    def waits(self, now: float) -> tuple[float, float]:
        """Seconds for httpx: to connect (the deadline), and for everything else (the
        deadline and the grace a node's own 504 gets to arrive)."""
        left = max(self.deadline - now, 0.001)
        return left, left + ANSWER_GRACE_SECONDS

    def refused(self, member: str, now: float) -> None:
        """``member`` refused the connection: the call did not reach it."""
        self.tried.append(member)
        self.view.refused(member, now)

    def answered(self, status: int, retry_after: str | None, body: bytes, now: float) -> float:
        """An answer that is not a 200: the seconds to wait before sending the call
        again (a 503: it did not run, and the wait ends before the deadline).

        Raises:
            TowtruckError: the error the node answered with, as its own class (a
                503 too, when its ``Retry-After`` ends past the deadline).
        """
        try:
            payload = codec.loads(body)
        except InvalidJSON:
            payload = None
        error = from_payload(payload, status)
        if status != 503:  # only a refusal surely did not run
            raise error
        wait = _seconds(retry_after)
        if now + wait >= self.deadline:
            raise error
        if isinstance(error, (PeerUnavailable, NodeStopping)):
            self.view.refresh_soon(now)
        self.tried.clear()  # what refused before may take it now
        self.view.retries += 1
        return wait

    def result(self, body: bytes) -> Any:
        """A 200's answer: the method's return value.

        Raises:
            InternalError: the body is not JSON (not a towtruck node's answer).
        """
        try:
            return codec.loads(body)
        except InvalidJSON as exc:
            raise InternalError(
                f"the answer to {self.method!r} on actor {self.actor_id!r} is not JSON",
                actor=self.actor_id,
                method=self.method,
            ) from exc

    def timed_out(self, member: str | None) -> CallTimeout:
        """The error for a call whose deadline passed on the client's side."""
        return CallTimeout(
            f"no answer to {self.method!r} on actor {self.actor_id!r} within the call's deadline",
            actor=self.actor_id,
            method=self.method,
            node=member,
        )

    def interrupted(self, member: str, exc: Exception) -> TowtruckError:
        """The error for a connection lost once the call was sent: it may have run."""
        return CallInterrupted(
            f"the connection to {member} was lost during the call to {self.method!r} on"
            f" actor {self.actor_id!r} ({type(exc).__name__}): it may or may not have run",
            actor=self.actor_id,
            method=self.method,
            node=member,
        )


def _segment(text: str) -> str:
    """A path segment the node decodes back to ``text``: every reserved character
    percent-encoded (``/`` as ``%2F``), and ``.`` or ``..`` too, which URL
    normalisation would otherwise take as "this" or "the parent" folder."""
    if text in (".", ".."):
        return text.replace(".", "%2E")
    return quote(text, safe="")


def _seconds(retry_after: str | None) -> float:
    """A ``Retry-After`` header's wait, in seconds (an HTTP date counts as absent)."""
    try:
        seconds = float(retry_after) if retry_after is not None else DEFAULT_RETRY_AFTER
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER
    if math.isnan(seconds):
        seconds = DEFAULT_RETRY_AFTER
    return max(seconds, MIN_RETRY_AFTER)
