"""Who is in the cluster, as one node sees it.

Two kinds of knowledge, kept apart:

- **Decisions** (a node joined, a node was removed) are spread to every node. Each is a
  ``(address, joined, version, born, by)`` record; the highest version wins, so the
  records can arrive in any order, any number of times (gossip with last-writer-wins).
  A removal stays as a tombstone, so stale gossip cannot bring the node back; adding it
  again makes a newer record. Versions are wall-clock nanoseconds bumped past every
  version seen (a Lamport clock), so a later decision wins even across clocks that
  drift a little. ``born`` is when the node started (its incarnation) and ``by`` who
  made the decision: a node cannot undo its own removal by announcing itself again
  (only another node's decision, or a restart, which is a newer ``born``), so a
  ``/removeserver`` sticks whatever the removed node says. Only a change of who is in
  (a join, a removal) is a change of placement; a record that only moves a version on
  is kept, and changes nothing else.
- **Liveness** (answering heartbeats or not) is each node's own observation, never
  spread: a peer that misses ``heartbeat_misses`` heartbeats in a row is *down* and
  leaves this node's placement; it is back when it answers again.

How a batch of records is taken in does not depend on their order: a batch that removes
this node removes it, whatever else it holds (the node then serves on its own until it
is added again).

Placement uses this node plus its joined peers that are alive. This module only keeps
state; the heartbeats and the messages that spread decisions live in
:mod:`towtruck.cluster.router`. It imports no trio: its clock is given.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ..errors import InvalidAddress
from ..ids import Address
from . import placement

__all__ = ["MAX_VERSION", "Member", "MemberState", "Membership"]

#: Versions are below this: JSON as orjson writes it holds 64-bit integers.
MAX_VERSION = 2**63
# Owners of ids remembered at most (see Membership.owner): a few MiB.
_OWNERS_REMEMBERED = 100_000


class MemberState(enum.Enum):
    """A member as this node sees it."""

    SELF = "self"  #: this node
    ALIVE = "alive"  #: answering heartbeats: in placement
    DOWN = "down"  #: missed too many heartbeats: out of placement, still pinged
    REMOVED = "removed"  #: taken out of the cluster: neither placed nor pinged


class Member:
    """One node this node knows of."""

    __slots__ = (
        "address",
        "born",
        "by",
        "decided_at",
        "down_since",
        "downs",
        "joined",
        "misses",
        "version",
    )

    def __init__(
        self,
        address: str,
        *,
        joined: bool,
        version: int,
        decided_at: float,
        born: int = 0,
        by: str = "",
    ) -> None:
        self.address = address
        self.joined = joined
        self.version = version
        #: When the node started (its incarnation), as far as this node knows; 0 if not.
        self.born = born
        #: Who made the decision in force: the node itself, another, or "" (unknown).
        self.by = by
        self.misses = 0
        #: How many times this node has taken it out of placement for not answering.
        self.downs = 0
        #: When it went down (on the membership's clock), while it is down.
        self.down_since: float | None = None
        #: When this node learned the decision (on the membership's clock).
        self.decided_at = decided_at

    def record(self) -> dict[str, Any]:
        """The decision about this member, as it is gossiped."""
        return {
            "address": self.address,
            "joined": self.joined,
            "version": self.version,
            "born": self.born,
            "by": self.by,
        }


class _Record(NamedTuple):
    """A gossiped decision, checked."""

    address: str
    joined: bool
    version: int
    born: int
    by: str


def _parse(record: Any) -> _Record | None:
    """A record as a peer sent it, or None if it is malformed."""
    try:
        address = str(Address.parse(str(record["address"])))
        joined, version = record["joined"], record["version"]
        born, by = record.get("born", 0), record.get("by", "")
    except (KeyError, TypeError, AttributeError, InvalidAddress):
        return None
    if not isinstance(joined, bool) or type(version) is not int or type(born) is not int:
        return None
    if not (0 <= version < MAX_VERSION and 0 <= born < MAX_VERSION):  # it has to fit JSON
        return None
    return _Record(address, joined, version, born, by if isinstance(by, str) else "")


class Membership:
    """The members of the cluster as one node sees them.

    Args:
        me: This node's advertised ``host:port``.
        misses_allowed: Heartbeats a peer may miss in a row before it is down.
        clock: Seconds on the node's clock (``trio.current_time`` in a node; a test's
            own clock otherwise): when members went down and when decisions were learned
            are read on it, as every other timing of the cluster is.
    """

    def __init__(self, me: str, *, misses_allowed: int, clock: Callable[[], float]) -> None:
        self.me = me
        self.misses_allowed = misses_allowed
        self._now = clock
        #: Bumped on every change of placement (decisions and liveness).
        self.generation = 0
        #: Bumped on every change of decision (a join or a removal).
        self.decisions = 0
        self._lamport = 0
        born = self._tick()
        self._members: dict[str, Member] = {
            me: Member(me, joined=True, version=born, decided_at=clock(), born=born, by=me)
        }
        self._owners: dict[str, str] = {}
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

    @property
    def alone(self) -> bool:
        """This node knows of no other, joined, down or removed."""
        return len(self._members) == 1

    def placement(self) -> tuple[str, ...]:
        """The members actors are placed on: this node (unless it is leaving) and its
        live peers, sorted."""
        return self._placement

    def owner(self, actor_id: str) -> str:
        """The member that owns ``actor_id`` in this node's view (remembered for the
        ids called lately, until placement changes: hashing the id for every member
        is a good part of a forwarded call's cost)."""
        members = self._placement
        if len(members) == 1:
            return members[0]
        owners = self._owners
        owner = owners.get(actor_id)
        if owner is None:
            if len(owners) >= _OWNERS_REMEMBERED:
                owners.clear()
            owner = owners[actor_id] = placement.owner(actor_id, members)
        return owner

    def records(self) -> list[dict[str, Any]]:
        """Every decision this node knows, tombstones included, to gossip."""
        return [member.record() for member in self._members.values()]

    def add(self, address: str, *, placed: bool = True) -> None:
        """Decide that ``address`` is in the cluster (newer than any earlier decision).
        ``placed=False``: keep it out of placement until it answers a heartbeat."""
        self._decide(address, joined=True)
        if not placed:
            member = self._members[address]
            member.misses, member.down_since = self.misses_allowed, self._now()
            self._changed()

    def downs(self, address: str) -> int:
        """How many times this node has taken ``address`` out of placement for not
        answering (0 if it never has, or does not know it)."""
        member = self._members.get(address)
        return 0 if member is None else member.downs

    def remove(self, address: str) -> None:
        """Decide that ``address`` is out of the cluster (a tombstone)."""
        self._decide(address, joined=False)

    def merge(self, records: Iterable[Any]) -> bool:
        """Take in gossiped decisions; newer ones win. Returns whether that changed who
        is in the cluster (a join or a removal; a version moved on alone is kept quietly).

        Malformed records are skipped. A record saying this node was removed makes it
        forget every peer, and the rest of the batch: it serves on its own until
        someone adds it again. A node's own announcement cannot undo its removal
        unless it restarted since (see the module's docstring).
        """
        batch = [record for record in map(_parse, records) if record is not None]
        if not batch:
            return False
        before = self._joined()
        self._lamport = max(self._lamport, *(record.version for record in batch))
        # This node's own record first: while it is out (removed, or leaving), nothing
        # else counts, in this batch or a later one, until a record adds it back.
        me = self._members[self.me]
        for record in batch:
            if record.address == self.me and record.version > me.version:
                me.joined, me.version, me.by = record.joined, record.version, record.by
                if not record.joined:  # removed: on its own, its own record saying so
                    self._members = {self.me: me}
        for record in batch if me.joined else ():
            member = self._members.get(record.address)
            if record.address == self.me:
                continue
            if member is None:
                self._members[record.address] = Member(
                    record.address,
                    joined=record.joined,
                    version=record.version,
                    decided_at=self._now(),
                    born=record.born,
                    by=record.by,
                )
                continue
            restarted = record.born > member.born
            member.born = max(member.born, record.born)
            if record.version <= member.version:
                continue
            if (
                record.joined
                and not member.joined
                and record.by == record.address
                and not restarted
            ):
                continue  # it announces itself back, removed: only another node may add it
            flipped = record.joined != member.joined
            member.joined, member.version, member.by = record.joined, record.version, record.by
            if flipped:
                member.misses, member.down_since = 0, None
                member.decided_at = self._now()
        after = self._joined()
        if after == before:
            return False
        self.decisions += 1
        self._changed()
        return True

    def _joined(self) -> frozenset[str]:
        return frozenset(a for a, member in self._members.items() if member.joined)

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
        now = self._now()
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
        return self._now() - member.down_since

    def missed(self, address: str, *, certain: bool = False) -> bool:
        """``address`` did not answer a heartbeat (or refused a connection: ``certain``
        takes it down at once). Returns whether that took it out of placement."""
        member = self._members.get(address)
        if member is None or address == self.me:
            return False
        was_up = member.misses < self.misses_allowed
        member.misses = self.misses_allowed if certain else member.misses + 1
        if was_up and member.misses >= self.misses_allowed and member.joined:
            member.down_since = self._now()
            member.downs += 1
            self._changed()
            return True
        return False

    def _decide(self, address: str, *, joined: bool) -> None:
        self.decisions += 1
        member = self._members.get(address)
        if member is None:
            member = self._members[address] = Member(
                address, joined=joined, version=self._tick(), decided_at=self._now(), by=self.me
            )
        else:
            member.joined, member.version, member.by = joined, self._tick(), self.me
            member.misses, member.down_since, member.decided_at = 0, None, self._now()
        self._changed()

    def _tick(self) -> int:
        self._lamport = max(self._lamport + 1, time.time_ns())
        return self._lamport

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
        self._owners.clear()
