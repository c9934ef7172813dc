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
- **Liveness** (answering probes or not) is first each node's own observation: a peer
  that refuses a connection, or fails a probe and then a suspicion, is *down* and leaves
  this node's placement; it is back when it answers again. Each node probes only a few
  peers per interval (:mod:`towtruck.cluster.gossip`), so what it sees is spread as
  *rumours*, SWIM's way: ``(address, alive | suspect | down, incarnation, born)``. A
  suspect that stays suspected for the suspicion time is down; a node that hears it is
  suspected or down says it is alive with a higher incarnation, which overrides both.
  Rumours, and decisions newly learned, ride on the messages nodes exchange anyway (a
  few per message, each sent about ``3 log2 N`` times); a digest of the decisions in
  every message tells two nodes when their views differ, and only then do they
  exchange every record.

How a batch of records is taken in does not depend on their order: a batch that removes
this node removes it, whatever else it holds (the node then serves on its own until it
is added again; with a membership table, which goes on listing its peers, it keeps them
and sends its calls on).

Placement uses this node plus its joined peers that are alive. The *agreed view* is
this node plus the joined peers it has heard from or heard of from a peer (not a
``--peer`` seed that never answered); :meth:`Membership.majority` says whether this
node reaches more than half of it. This module only keeps state; the messages live in
:mod:`towtruck.cluster.gossip`. It imports no trio: its clock is given.
"""

from __future__ import annotations

import enum
import hashlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from ..errors import InvalidAddress
from ..ids import Address
from . import placement

__all__ = ["MAX_VERSION", "Heard", "Member", "MemberState", "Membership"]

#: Versions are below this: JSON as orjson writes it holds 64-bit integers.
MAX_VERSION = 2**63
# Owners of ids remembered at most (see Membership.owner): a few MiB.
_OWNERS_REMEMBERED = 100_000
#: What a liveness rumour can say.
ALIVE, SUSPECT, DOWN = "alive", "suspect", "down"
# Each rumour goes out this many times log2 of the cluster's size (SWIM's lambda).
_SPREAD: Final = 3


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
        "agreed",
        "born",
        "by",
        "decided_at",
        "down_since",
        "downs",
        "incarnation",
        "joined",
        "misses",
        "suspected_at",
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
        #: The highest incarnation heard of it: only it raises its own (SWIM's refutation).
        self.incarnation = 0
        #: Since when it is suspected (on the membership's clock), while it is.
        self.suspected_at: float | None = None
        #: Part of the agreed view: heard from, or heard of from a peer.
        self.agreed = True

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


class Heard(NamedTuple):
    """What a batch of gossip changed."""

    decisions: bool  #: who is in the cluster changed
    up: list[str]  #: peers back in placement
    down: list[str]  #: peers taken out of placement
    taken_for_down: bool  #: a peer took this node for down meanwhile


def _parse(record: Any, known: dict[str, Any]) -> _Record | None:
    """A record as a peer sent it, or None if it is malformed. An address already in
    ``known`` was checked when it first came."""
    try:
        address = record["address"]
        if not (isinstance(address, str) and address in known):
            address = str(Address.parse(str(address)))
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
        wall_clock: Nanoseconds since the epoch, that versions start from (a
            simulation gives its own, so that a run replays exactly).
    """

    def __init__(
        self,
        me: str,
        *,
        misses_allowed: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.me = me
        self.misses_allowed = misses_allowed
        self._now = clock
        self._wall = wall_clock
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
        #: Whether this node forgets its peers when it is removed, and serves on its own
        #: until added back. Not with a membership table, which goes on saying who is
        #: in: the node then places nothing on itself and sends its calls on to them.
        self.forgets_when_removed = True
        # Rumours to piggyback, by (kind, address): [what it says, times left to send].
        self._rumours: dict[tuple[str, str], list[Any]] = {}
        self._revision = 0  # bumped whenever a record changes: the digest's cache key
        # peers() as last computed: for a generation and revision, the members by
        # state, and the answers by states asked.
        self._peers: tuple[
            tuple[int, int],
            dict[MemberState | None, list[str]],
            dict[tuple[MemberState, ...], list[str]],
        ] = ((-1, -1), {}, {})
        self._majority: tuple[tuple[int, int], bool] = ((-1, -1), True)
        self._records: tuple[int, list[dict[str, Any]]] = (-1, [])
        self._joined_cache: tuple[int, frozenset[str]] = (-1, frozenset())
        self._digest: tuple[int, str] = (-1, "")

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
        key = (self.generation, self._revision)
        if self._peers[0] != key:
            # Every member's state at once: with hundreds of members (a simulation),
            # one pass per change rather than one per change and states asked.
            by_state: dict[MemberState | None, list[str]] = {}
            for address in sorted(self._members):
                by_state.setdefault(self.state(address), []).append(address)
            self._peers = (key, by_state, {})
        _, by_state, found = self._peers
        wanted = states or (MemberState.ALIVE, MemberState.DOWN)
        peers = found.get(wanted)
        if peers is None:
            if len(wanted) == 1:
                peers = by_state.get(wanted[0], [])
            else:
                peers = sorted(a for state in set(wanted) for a in by_state.get(state, ()))
            found[wanted] = peers
        return list(peers)

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
        if self._records[0] != self._revision:
            self._records = (self._revision, [m.record() for m in self._members.values()])
        return list(self._records[1])

    def record(self) -> dict[str, Any]:
        """This node's own decision record."""
        return self._members[self.me].record()

    def digest(self) -> str:
        """A short hash of :meth:`records`: two nodes with the same digest agree on
        every decision, so they need not exchange them."""
        if self._digest[0] != self._revision:
            parts = sorted(
                f"{m.address} {m.joined:d} {m.version} {m.born} {m.by}"
                for m in self._members.values()
            )
            digest = hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()
            self._digest = (self._revision, digest)
        return self._digest[1]

    @property
    def incarnation(self) -> int:
        """This node's incarnation: raised each time it refutes a suspicion of itself."""
        return self._members[self.me].incarnation

    def gossip(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` rumours to piggyback on a message, the least sent first; each
        is dropped once it has gone out enough times."""
        rumours = self._rumours
        if len(rumours) > limit:
            keys = sorted(rumours, key=lambda key: -rumours[key][1])[:limit]
        else:
            keys = list(rumours)
        taken = []
        for key in keys:
            rumour = rumours[key]
            taken.append(rumour[0])
            rumour[1] -= 1
            if rumour[1] <= 0:
                del rumours[key]
        return taken

    def rumour_about(self, address: str) -> dict[str, Any] | None:
        """What this node believes of ``address`` if it is not that it is alive (to
        tell it, so that it can refute)."""
        member = self._members.get(address)
        if member is None or address == self.me:
            return None
        if member.misses >= self.misses_allowed and member.downs:  # not a seed yet to answer
            return self._liveness(member, DOWN)
        if member.suspected_at is not None:
            return self._liveness(member, SUSPECT)
        return None

    def liveness(self) -> list[dict[str, Any]]:
        """What this node believes of every member it does not take for alive: sent
        with every decision, so that a node joining learns who is down too."""
        return [rumour for a in self._members if (rumour := self.rumour_about(a)) is not None]

    def take_in(self, items: Any) -> Heard:
        """Take in the rumours and records piggybacked on a message (malformed ones
        are skipped); returns what changed."""
        if not isinstance(items, list):
            return Heard(False, [], [], False)
        records = [item for item in items if isinstance(item, dict) and "live" not in item]
        decisions = self.merge(records) if records else False
        up: list[str] = []
        down: list[str] = []
        taken_for_down = False
        for item in items:
            if isinstance(item, dict) and "live" in item:
                change = self._hear_liveness(item)
                if change == "up":
                    up.append(item["address"])
                elif change == "down":
                    down.append(item["address"])
                elif change == "me":
                    taken_for_down = True
        return Heard(decisions, up, down, taken_for_down)

    def _hear_liveness(self, item: dict[str, Any]) -> str | None:
        """Take in one liveness rumour; returns ``"up"``/``"down"`` if it moved the
        member in or out of placement, ``"me"`` if it says this node was down."""
        address, live = item.get("address"), item.get("live")
        incarnation, born = item.get("incarnation"), item.get("born", 0)
        if (
            not isinstance(address, str)
            or live not in (ALIVE, SUSPECT, DOWN)
            or type(incarnation) is not int
            or type(born) is not int
            or not 0 <= incarnation < MAX_VERSION
        ):
            return None
        member = self._members.get(address)
        if member is None or not member.joined:
            return None
        if address == self.me:
            if live != ALIVE and incarnation >= member.incarnation and born >= member.born:
                member.incarnation = incarnation + 1  # refute: I am alive, and newer
                self._spread(("l", address), self._liveness(member, ALIVE))
                return "me" if live == DOWN else None
            return None
        if born < member.born:
            return None  # about an earlier run of that node
        if born > member.born:  # it restarted: its incarnations start again
            member.born, member.incarnation = born, -1
            self._revision += 1
        is_down = member.misses >= self.misses_allowed
        if live == ALIVE:
            if incarnation <= member.incarnation:
                return None
            member.incarnation, member.suspected_at = incarnation, None
            self._spread(("l", address), item)
            return "up" if self.heard_from(address) else None
        if incarnation < member.incarnation or is_down:
            return None
        member.incarnation = incarnation
        if live == SUSPECT:
            if member.suspected_at is None:
                member.suspected_at = self._now()
                self._spread(("l", address), item)
            return None
        return "down" if self.missed(address, certain=True) else None

    def suspect(self, address: str) -> None:
        """``address`` failed a probe, direct and indirect: suspect it (and say so)."""
        member = self._members.get(address)
        if member is None or address == self.me or not member.joined:
            return
        if member.suspected_at is None and member.misses < self.misses_allowed:
            member.suspected_at = self._now()
            self._spread(("l", address), self._liveness(member, SUSPECT))

    def overdue(self, after: float) -> list[str]:
        """Take out of placement the peers suspected for ``after`` seconds and more
        (and say so); returns their addresses."""
        now = self._now()
        overdue = [
            m
            for m in self._members.values()
            # As next_overdue adds them: the suspect is due exactly when it says.
            if m.suspected_at is not None and m.suspected_at + after <= now
        ]
        down = []
        for member in overdue:
            if self.missed(member.address, certain=True):
                down.append(member.address)
            member.suspected_at = None  # down now, or no longer in the cluster
        return down

    def next_overdue(self, after: float) -> float:
        """When the first suspect will have been suspected ``after`` seconds (on the
        membership's clock); infinity if none is suspected."""
        times = [m.suspected_at for m in self._members.values() if m.suspected_at is not None]
        return min(times) + after if times else math.inf

    def view(self) -> list[str]:
        """The agreed view (see the module's docstring), sorted."""
        return sorted(
            a for a, m in self._members.items() if m.joined and (m.agreed or a == self.me)
        )

    def majority(self) -> bool:
        """Whether this node reaches more than half of the agreed view, or exactly half
        with the lowest address of the view among them (Akka's keep-majority)."""
        key = (self.generation, self._revision)
        if self._majority[0] != key:
            view = self.view()
            reached = [a for a in view if a == self.me or self.state(a) is MemberState.ALIVE]
            if not view:
                majority = True
            elif 2 * len(reached) != len(view):
                majority = 2 * len(reached) > len(view)
            else:
                majority = view[0] in reached
            self._majority = (key, majority)
        return self._majority[1]

    def _liveness(self, member: Member, live: str) -> dict[str, Any]:
        return {
            "address": member.address,
            "live": live,
            "incarnation": member.incarnation,
            "born": member.born,
        }

    def _spread(self, key: tuple[str, str], rumour: dict[str, Any]) -> None:
        """Piggyback ``rumour`` on the next messages, replacing an older one about the
        same member (a record, or a liveness rumour)."""
        self._rumours[key] = [rumour, _SPREAD * math.ceil(math.log2(len(self._members) + 1))]

    def add(self, address: str, *, placed: bool = True) -> None:
        """Decide that ``address`` is in the cluster (newer than any earlier decision).
        ``placed=False``: keep it out of placement until it answers a heartbeat."""
        self._decide(address, joined=True)
        if not placed:
            member = self._members[address]
            member.misses, member.down_since = self.misses_allowed, self._now()
            member.agreed = False
            self._changed()

    def downs(self, address: str) -> int:
        """How many times this node has taken ``address`` out of placement for not
        answering (0 if it never has, or does not know it)."""
        member = self._members.get(address)
        return 0 if member is None else member.downs

    def decision(self, address: str) -> tuple[int, str] | None:
        """The decision in force about ``address`` (its join or removal), as its version
        and maker: tells a new decision from one seen before. None if it is unknown."""
        member = self._members.get(address)
        return None if member is None else (member.version, member.by)

    def remove(self, address: str) -> None:
        """Decide that ``address`` is out of the cluster (a tombstone)."""
        self._decide(address, joined=False)

    def merge(self, records: Iterable[Any]) -> bool:
        """Take in gossiped decisions; newer ones win. Returns whether that changed who
        is in the cluster (a join or a removal; a version moved on alone is kept quietly).

        Malformed records are skipped. A record saying this node was removed makes it
        forget every peer (unless ``forgets_when_removed`` is off), and the rest of the
        batch: it serves on its own until someone adds it again. A node's own
        announcement cannot undo its removal unless it restarted since (see the
        module's docstring).
        """
        known = self._members
        batch = [parsed for record in records if (parsed := _parse(record, known)) is not None]
        if not batch:
            return False
        before = self._joined()
        self._lamport = max(self._lamport, *(record.version for record in batch))
        # This node's own record first: while it is out (removed, or leaving), nothing
        # else counts, in this batch or a later one, until a record adds it back.
        me = self._members[self.me]
        for record in batch:
            if record.address == self.me and (record.version, record.by) > (me.version, me.by):
                me.joined, me.version, me.by = record.joined, record.version, record.by
                self._learned(record)
                if not record.joined and self.forgets_when_removed:
                    self._members = {self.me: me}  # on its own, its record saying so
                    self._rumours.clear()
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
                self._learned(record)
                continue
            if not member.agreed:  # it joins the agreed view
                member.agreed = True
                self._revision += 1
            restarted = record.born > member.born
            if restarted:
                member.born, member.incarnation = record.born, 0
                self._revision += 1
            if (record.version, record.by) <= (member.version, member.by):
                continue  # not newer (equal versions: the one by the higher name wins)
            if (
                record.joined
                and not member.joined
                and record.by == record.address
                and not restarted
            ):
                continue  # it announces itself back, removed: only another node may add it
            flipped = record.joined != member.joined
            member.joined, member.version, member.by = record.joined, record.version, record.by
            self._learned(record)
            if flipped:
                member.misses, member.down_since, member.suspected_at = 0, None, None
                member.decided_at = self._now()
        after = self._joined()
        if after == before:
            return False
        self.decisions += 1
        self._changed()
        return True

    def _learned(self, record: _Record) -> None:
        """A decision newly taken in: pass it on."""
        self._revision += 1
        self._spread(("m", record.address), record._asdict())

    def _joined(self) -> frozenset[str]:
        if self._joined_cache[0] != self._revision:
            joined = frozenset(a for a, member in self._members.items() if member.joined)
            self._joined_cache = (self._revision, joined)
        return self._joined_cache[1]

    def heard_from(self, address: str) -> bool:
        """``address`` answered; returns whether that brought it back into placement."""
        member = self._members.get(address)
        if member is None or address == self.me:
            return False
        was_down = member.misses >= self.misses_allowed
        member.misses = 0
        member.down_since = member.suspected_at = None
        if not member.agreed:  # it joins the agreed view
            member.agreed = True
            self._revision += 1
        if was_down and member.joined:
            self._changed()
            return True
        return False

    def forget(self, address: str) -> None:
        """Drop what is known of ``address``, leaving no tombstone (an alias of a member
        under another name, or a member gone for good)."""
        if address != self.me and self._members.pop(address, None) is not None:
            self._revision += 1
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
            self._revision += 1
            self._changed()
        return expired

    def removed_for(self, address: str) -> float:
        """Seconds since this node learned that ``address`` was removed (0 if it is not)."""
        member = self._members.get(address)
        if member is None or member.joined or address == self.me:
            return 0.0
        return self._now() - member.decided_at

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
            member.suspected_at = None
            member.downs += 1
            self._spread(("l", address), self._liveness(member, DOWN))
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
            member.suspected_at = None
        self._revision += 1
        self._spread(("m", address), member.record())
        self._changed()

    def _tick(self) -> int:
        self._lamport = max(self._lamport + 1, self._wall())
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
