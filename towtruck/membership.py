"""Who is in the cluster, as one node sees it.

Two kinds of knowledge, kept apart:

- **Decisions** (a node joined, a node was removed) are spread to every node. Each is a
  ``(address, joined, version)`` record; the highest version wins, so the records can
  arrive in any order, any number of times (gossip with last-writer-wins). A removal
  stays as a tombstone, so stale gossip cannot bring the node back; adding it again
  makes a newer record. Versions are wall-clock nanoseconds bumped past every version
  seen (a Lamport clock), so a later decision wins even across clocks that drift a
  little.
- **Liveness** (answering heartbeats or not) is each node's own observation, never
  spread: a peer that misses ``heartbeat_misses`` heartbeats in a row is *down* and
  leaves this node's placement; it is back when it answers again.

Placement uses this node plus its joined peers that are alive. This module only keeps
state; the heartbeats and the messages that spread decisions live in
:mod:`towtruck.router`. It imports no trio.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from typing import Any

from . import placement
from .address import Address
from .errors import InvalidAddress

__all__ = ["MAX_VERSION", "Member", "MemberState", "Membership"]

#: Versions are below this: JSON as orjson writes it holds 64-bit integers.
MAX_VERSION = 2**63


class MemberState(enum.Enum):
    """A member as this node sees it."""

    SELF = "self"  #: this node
    ALIVE = "alive"  #: answering heartbeats: in placement
    DOWN = "down"  #: missed too many heartbeats: out of placement, still pinged
    REMOVED = "removed"  #: taken out of the cluster: neither placed nor pinged


class Member:
    """One node this node knows of."""

    __slots__ = ("address", "decided_at", "down_since", "joined", "misses", "version")

    def __init__(self, address: str, *, joined: bool, version: int) -> None:
        self.address = address
        self.joined = joined
        self.version = version
        self.misses = 0
        #: When it went down (``time.monotonic()``), while it is down.
        self.down_since: float | None = None
        #: When this node learned the decision (``time.monotonic()``).
        self.decided_at = time.monotonic()

    def record(self) -> dict[str, Any]:
        """The decision about this member, as it is gossiped."""
        return {"address": self.address, "joined": self.joined, "version": self.version}


class Membership:
    """The members of the cluster as one node sees them.

    Args:
        me: This node's advertised ``host:port``.
        misses_allowed: Heartbeats a peer may miss in a row before it is down.
    """

    def __init__(self, me: str, *, misses_allowed: int) -> None:
        self.me = me
        self.misses_allowed = misses_allowed
        #: Bumped on every change of placement (decisions and liveness).
        self.generation = 0
        #: Bumped on every change of decision (a join or a removal).
        self.decisions = 0
        self._clock = 0
        self._members: dict[str, Member] = {me: Member(me, joined=True, version=self._tick())}
        self._placement: tuple[str, ...] = (me,)

    def state(self, address: str) -> MemberState | None:
        """How this node sees ``address``; None if it has never heard of it."""
        member = self._members.get(address)
        if member is None:
            return None
        if address == self.me:
            return MemberState.SELF
        if not member.joined:
            return MemberState.REMOVED
        return MemberState.ALIVE if member.misses < self.misses_allowed else MemberState.DOWN

    def peers(self, *states: MemberState) -> list[str]:
        """Addresses of the other members in any of ``states`` (all joined ones if none
        is given), sorted."""
        wanted = set(states) or {MemberState.ALIVE, MemberState.DOWN}
        return sorted(a for a in self._members if a != self.me and self.state(a) in wanted)

    def placement(self) -> tuple[str, ...]:
        """The members actors are placed on: this node (unless it is leaving) and its
        live peers, sorted."""
        return self._placement

    def owner(self, actor_id: str) -> str:
        """The member that owns ``actor_id`` in this node's view."""
        members = self._placement
        return members[0] if len(members) == 1 else placement.owner(actor_id, members)

    def records(self) -> list[dict[str, Any]]:
        """Every decision this node knows, tombstones included, to gossip."""
        return [member.record() for member in self._members.values()]

    def add(self, address: str) -> None:
        """Decide that ``address`` is in the cluster (newer than any earlier decision)."""
        self._decide(address, joined=True)

    def remove(self, address: str) -> None:
        """Decide that ``address`` is out of the cluster (a tombstone)."""
        self._decide(address, joined=False)

    def merge(self, records: Iterable[Any]) -> bool:
        """Take in gossiped decisions; newer ones win. Returns whether anything changed.

        Malformed records are skipped. A record saying this node was removed makes it
        forget every peer: it serves on its own until someone adds it again.
        """
        changed = False
        for record in records:
            try:
                address = str(Address.parse(str(record["address"])))
                joined, version = record["joined"], record["version"]
            except (KeyError, TypeError, InvalidAddress):
                continue
            if not isinstance(joined, bool) or type(version) is not int:
                continue
            if not 0 <= version < MAX_VERSION:  # it has to fit the JSON this node sends
                continue
            self._clock = max(self._clock, version)
            member = self._members.get(address)
            if member is not None and member.version >= version:
                continue
            if member is not None and address == self.me:
                member.joined, member.version = joined, version
                if not joined:  # removed: on its own, its own record saying so
                    self._members = {self.me: member}
                changed = True
                continue
            if member is None:
                self._members[address] = Member(address, joined=joined, version=version)
            else:
                member.joined, member.version = joined, version
                member.misses, member.down_since = 0, None
                member.decided_at = time.monotonic()
            changed = True
        if changed:
            self.decisions += 1
            self._changed()
        return changed

    def heard_from(self, address: str) -> bool:
        """``address`` answered; returns whether that brought it back into placement."""
        member = self._members.get(address)
        if member is None or address == self.me:
            return False
        was_down = member.misses >= self.misses_allowed
        member.misses = 0
        member.down_since = None
        if was_down and member.joined:
            self._changed()
            return True
        return False

    def forget(self, address: str) -> None:
        """Drop what is known of ``address``, leaving no tombstone (an alias of a member
        under another name, or a member gone for good)."""
        if address != self.me and self._members.pop(address, None) is not None:
            self._changed()

    def expire(self, after: float) -> list[str]:
        """Forget the members down, and the tombstones older, than ``after`` seconds;
        returns their addresses. A node gone that long rejoins like a new one."""
        now = time.monotonic()
        expired = [
            member.address
            for member in self._members.values()
            if member.address != self.me
            and (
                (member.down_since is not None and now - member.down_since > after)
                or (not member.joined and now - member.decided_at > after)
            )
        ]
        for address in expired:
            del self._members[address]
        if expired:
            self._changed()
        return expired

    def down_for(self, address: str) -> float:
        """Seconds since ``address`` went down (0 if it is not down)."""
        member = self._members.get(address)
        if member is None or member.down_since is None:
            return 0.0
        return time.monotonic() - member.down_since

    def missed(self, address: str, *, certain: bool = False) -> bool:
        """``address`` did not answer a heartbeat (or refused a connection: ``certain``
        takes it down at once). Returns whether that took it out of placement."""
        member = self._members.get(address)
        if member is None or address == self.me:
            return False
        was_up = member.misses < self.misses_allowed
        member.misses = self.misses_allowed if certain else member.misses + 1
        if was_up and member.misses >= self.misses_allowed and member.joined:
            member.down_since = time.monotonic()
            self._changed()
            return True
        return False

    def _decide(self, address: str, *, joined: bool) -> None:
        self.decisions += 1
        member = self._members.get(address)
        if member is None:
            self._members[address] = Member(address, joined=joined, version=self._tick())
        else:
            member.joined, member.version, member.misses = joined, self._tick(), 0
            member.down_since, member.decided_at = None, time.monotonic()
        self._changed()

    def _tick(self) -> int:
        self._clock = max(self._clock + 1, time.time_ns())
        return self._clock

    def _changed(self) -> None:
        self.generation += 1
        me = self._members[self.me]
        placed = sorted(
            a
            for a in self._members
            if (a == self.me and me.joined) or self.state(a) is MemberState.ALIVE
        )
        # A node that left places nothing on itself, while it has live peers to send to.
        self._placement = tuple(placed) or (self.me,)
