"""A node's part in a membership table (``--membership URL``): its own row, and its view
of the cluster kept in step with the table's rows.

Heartbeats stay between the nodes (:mod:`towtruck.cluster.gossip`): they decide who is
*in placement* now, from moment to moment. The table decides who is *in the cluster*:

- **Joining** is writing a row: a node starting with a table needs no ``--peer`` and no
  ``/addserver``; it reads the rows of the others and joins them as seeds. Once its
  view has settled its row becomes ``active``; a graceful stop makes it ``leaving``.
- **Every round** (a heartbeat interval) a node says it is alive, reads the table, and
  takes in what changed: rows it has not seen are added to its view (and sent a
  heartbeat), rows ``dead`` or ``leaving`` are taken out.
- **Deaths.** A peer this node has taken out of placement (missed heartbeats) for the
  ``suspicion`` time gets its vote; once enough fresh votes are in (two, or one where fewer than two could vote),
  the voter that sees it declares the peer dead with one conditional update on the
  table's version, which exactly one voter wins.
- **Reading itself dead** (its peers stopped hearing it: a stall, a partition), a node
  gives up every actor it holds, since they may be active elsewhere by now, and joins
  again as a new generation.
- **The table unreachable**: safety first. Nothing is decided (no joins, no deaths)
  until it answers again; calls go on with the last view. Logged once, and again when
  it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from ..activation import DeactivationReason
from ..catalog import Catalog
from ..errors import StoreUnavailable
from .membership import Membership, MemberState
from .table import MembershipTable, Status, Table

if TYPE_CHECKING:
    from .gossip import Gossip

__all__ = ["Registrar"]

logger = logging.getLogger("towtruck.cluster")

#: Votes that declare a death, where at least that many peers can vote (Orleans' default).
VOTES_NEEDED: Final = 2
_IN: Final = (Status.JOINING, Status.ACTIVE)


class Registrar:
    """Keeps a node's row in a membership table and its view in step with the table.

    Args:
        me: The node's advertised ``host:port``.
        table: The membership table.
        membership: The node's view.
        catalog: Its actors (given up if the table says it is dead).
        interval: Seconds between two rounds (the heartbeat interval).
        vote_after: A peer out of placement this long gets this node's vote (a death
            is for good: a shorter blip only takes a peer out of placement).
        vote_window: Votes older than this no longer count.
        clock: Seconds since the Unix epoch (the table's times are wall-clock times,
            compared between machines).
    """

    def __init__(
        self,
        me: str,
        table: MembershipTable,
        membership: Membership,
        catalog: Catalog,
        *,
        interval: float,
        vote_after: float,
        vote_window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.me = me
        self.table = table
        self.membership = membership
        self._catalog = catalog
        self._interval = interval
        self._vote_after = vote_after
        self._vote_window = vote_window
        self._clock = clock
        #: This node's generation: when it (last) joined, in ns since the Unix epoch.
        self.generation = 0
        #: Deaths this node declared (for tests and /health).
        self.declared = 0
        self.gossip: Gossip | None = None
        self._started = trio.Event()  # the node has made its first attempt to join
        self._joined = trio.Event()
        self._failing = False
        self._leaving = False

    async def join(self) -> list[str]:
        """Write this node's row (a new generation) and return the addresses of the
        others in the cluster, to join as seeds. On a table that does not answer, none:
        the node serves alone, and joins once the table is back."""
        self._started.set()
        self.generation = max(time.time_ns(), self.generation + 1)
        try:
            await self.table.join(self.me, self.generation, self._clock())
            table = await self.table.read()
        except StoreUnavailable as exc:
            self._failed(exc)
            return []
        self._joined.set()
        logger.info(
            "joined the membership table %s as generation %d", self.table.url, self.generation
        )
        return [a for a, row in table.latest().items() if a != self.me and row.status in _IN]

    async def activate(self) -> None:
        """Mark this node's row ``active`` (its view has settled)."""
        await self._set(Status.ACTIVE)

    async def leave(self) -> None:
        """Mark this node's row ``leaving`` (a graceful stop begins)."""
        self._leaving = True
        await self._set(Status.LEAVING)

    async def run(self) -> None:
        """Rounds, every interval, for as long as the node runs (see the module), once
        the node has made its first attempt to join (:meth:`join`, from
        ``Gossip.start``); a join the table did not answer is tried again."""
        await self._started.wait()
        while True:
            await trio.sleep(self._interval)
            if self._leaving:
                continue
            if not self._joined.is_set():
                seeds = await self.join()
                if self._joined.is_set() and self.gossip is not None:
                    await self.gossip.join_found(seeds)
                    await self.activate()
            else:
                await self.round()

    async def round(self) -> None:
        """One round: say alive, read the table, take in what changed, vote, declare."""
        now = self._clock()
        try:
            await self.table.alive(self.me, self.generation, now)
            table = await self.table.read()
        except StoreUnavailable as exc:
            self._failed(exc)
            return
        if self._failing:
            logger.warning("the membership table %s answers again", self.table.url)
            self._failing = False
        mine = table.row(self.me, self.generation)
        if mine is None or mine.status is Status.DEAD:
            await self._rejoin()
            return
        found = self._take_in(table)
        if found and self.gossip is not None:
            await self.gossip.join_found(found, readd=True)
        try:
            await self._vote(table, now)
        except StoreUnavailable as exc:
            self._failed(exc)

    def _take_in(self, table: Table) -> list[str]:
        """Bring the view in step with the table's rows; the addresses added. An address
        this node has taken out comes back only as a newer generation than any of its
        that the table has out (dead or leaving): a node that restarted, or rejoined."""
        added = []
        for address, row in table.latest().items():
            if address == self.me:
                continue
            state = self.membership.state(address)
            if row.status in _IN:
                if state is None or (
                    state is MemberState.REMOVED and row.generation > _newest_out(table, address)
                ):
                    added.append(address)
            elif state in (MemberState.ALIVE, MemberState.DOWN):
                logger.info(
                    "%s is %s in the membership table: out of the cluster",
                    address,
                    row.status.value,
                )
                self.membership.remove(address)
        return added

    async def remove(self, address: str) -> None:
        """Mark ``address``'s newest row ``leaving`` (``/removeserver`` on a cluster with a
        table: the table is where the decision lasts)."""
        try:
            row = (await self.table.read()).latest().get(address)
            if row is not None:
                await self.table.set_status(address, row.generation, Status.LEAVING, self._clock())
        except StoreUnavailable as exc:
            self._failed(exc)

    async def _vote(self, table: Table, now: float) -> None:
        """Vote against the peers out of placement; declare the dead ones."""
        latest = table.latest()
        standing = [a for a, row in latest.items() if row.status in _IN]
        for address in self.membership.peers(MemberState.DOWN):
            if self.membership.down_for(address) < self._vote_after:
                continue  # a blip (a busy machine): not yet worth a vote
            row = latest.get(address)
            if row is None or row.status not in _IN:
                continue
            voted = await self.table.vote(address, row.generation, self.me, now)
            if voted is None:
                continue
            voters = len(standing) - 1  # everyone standing but the suspect
            needed = min(VOTES_NEEDED, max(1, voters))
            if voted.fresh_votes(now, self._vote_window) < needed:
                continue
            if await self.table.declare_dead(address, row.generation, table.version, now):
                self.declared += 1
                logger.warning(
                    "declared %s (generation %d) dead in the membership table: %d votes",
                    address,
                    row.generation,
                    voted.fresh_votes(now, self._vote_window),
                )
                self.membership.remove(address)
                return  # the version moved on: one declaration a round

    async def _rejoin(self) -> None:
        """This node reads itself dead: give up every actor, join as a new generation."""
        logger.error(
            "the membership table %s says this node (generation %d) is dead: its peers"
            " stopped hearing it. Giving up its %d actors (they may be active elsewhere by"
            " now) and joining again as a new generation",
            self.table.url,
            self.generation,
            len(self._catalog),
        )
        for actor_id in self._catalog.ids():
            activation = self._catalog.get(actor_id)
            if activation is not None:
                activation.request_deactivation(DeactivationReason.DUPLICATE)
        self._joined = trio.Event()
        seeds = await self.join()
        if self._joined.is_set() and self.gossip is not None:
            await self.gossip.join_found(seeds, readd=True)
            await self.activate()

    async def _set(self, status: Status) -> None:
        if not self._joined.is_set():
            return
        try:
            await self.table.set_status(self.me, self.generation, status, self._clock())
        except StoreUnavailable as exc:
            self._failed(exc)

    def _failed(self, exc: StoreUnavailable) -> None:
        if not self._failing:
            logger.warning(
                "%s; deciding no joins and no deaths until it answers (calls go on with the"
                " last view)",
                exc.message,
            )
        self._failing = True


def _newest_out(table: Table, address: str) -> int:
    """The newest generation of ``address`` that the table has out (dead or leaving);
    0 if none."""
    return max(
        (r.generation for r in table.rows if r.address == address and r.status not in _IN),
        default=0,
    )
