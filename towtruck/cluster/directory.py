"""Where actors live beyond this node: the peers' bloom filters, and a memory of
where ids were found.

When membership changes, an actor stays on the node where it was activated, so the
node that now owns its id may not hold it. Before activating an id it owns, a node
asks (``/query``) only the peers whose bloom filter may hold the id (a peer whose
filter it has not fetched yet may hold anything), and remembers where the actor was
found, so later calls go straight there until it is collected. This node's own
filter is kept here too, updated as actors enter and leave the table, and rebuilt
(in slices, between checkpoints) when it is sized wrong for the actor count.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol
from urllib.parse import quote

import trio

from ..catalog import Catalog
from ..errors import PeerUnavailable, TowtruckError
from . import placement
from .bloom import BloomFilter, CountingBloom
from .membership import Membership, MemberState

__all__ = ["Directory", "PeerClient"]

logger = logging.getLogger("towtruck.cluster")

#: How many "found it on that peer" answers are remembered.
FOUND_CACHE_SIZE: Final = 100_000
_QUERIES_AT_ONCE: Final = 16
# Ids hashed between checkpoints while rebuilding this node's filter.
_REBUILD_SLICE: Final = 5_000


class PeerClient(Protocol):
    """How the cluster talks to other nodes (:class:`towtruck.transport.peers.HttpPeers`).

    Failures raise :class:`~towtruck.errors.TowtruckError`: :class:`PeerUnavailable`
    when the peer cannot be reached (``details["delivered"]`` is False when the
    request certainly never arrived), or the error the peer answered with. Each call
    is bounded by the caller's cancel scope, not by a timeout of its own.
    """

    async def forward(self, peer: str, envelope: bytes, deadline: float) -> bytes:
        """Send a call to ``peer``; the answer is its result as JSON. Bounded by
        ``deadline`` (:class:`~towtruck.errors.CallTimeout` past it)."""
        ...

    async def post(self, peer: str, path: str, payload: Any) -> Any:
        """POST JSON to ``peer`` and return the JSON answer."""
        ...

    async def get(self, peer: str, path: str) -> Any:
        """GET from ``peer`` and return the JSON answer."""
        ...

    def prune(self, keep: set[str]) -> None:
        """Close what is held open for peers not in ``keep`` (their lanes)."""
        ...

    def interrupt(self, peer: str) -> None:
        """Fail the calls on their way to ``peer`` (it stopped answering)."""
        ...

    def stalled(self, peer: str, after: float) -> bool:
        """Whether calls sent to ``peer`` have gone ``after`` seconds with no sign of
        life from it (it answers heartbeats, say, but swallows calls)."""
        ...


class Directory:
    """This node's knowledge of which actors live where.

    Which peers may hold actors: the live ones; the removed ones, from the moment this
    node sees them removed until their filter has been fetched fresh (they may have
    activated actors just before they left) or for ``suspicion`` seconds, and then while
    that filter holds actors (they serve those until they are collected) or moves on;
    and, for ``suspicion`` seconds after they went down, the down ones. A peer may be
    taken for down while it is only slow (under overload, say), or cut off by a
    partition, and its actors must not be activated a second time elsewhere, so a down
    peer is asked about every id, whatever its last filter says (which may predate the
    actor). One that refuses a connection is gone at once: nothing listens there any
    more. ``strict`` (the keep-majority strategy): a down peer is asked only about the
    ids it owned while it was in placement and those its last filter may hold; if it
    does not answer, the call fails (503) rather than activate the id, until the
    suspicion time is over; by then the peer has given up its actors if it is cut off in
    a minority. So does a live peer that does not answer in time: slow is not gone. A
    live peer whose filter could not be fetched fresh after a change of membership, and
    a removed one whose filter has not been fetched fresh since it left, is asked about
    every id until one is.

    Filters are fetched when they changed: each heartbeat carries the sender's filter
    version, and a peer's filter is fetched again only when the version heard is not
    the one held (and fresh after a change of membership, see
    :mod:`towtruck.cluster.gossip`). An idle cluster fetches none.

    Args:
        catalog: This node's actor table; made the catalog's observer (the node's
            assembly does it), the directory keeps this node's bloom filter.
        peers: The client to query peers with.
        membership: Who the peers are and how they are doing.
        suspicion: How long a down peer is still asked about ids.
        query_timeout: How long a peer may take to say whether it holds an id.
        strict: Do not activate an id a peer may hold and does not answer about.
    """

    def __init__(
        self,
        catalog: Catalog,
        peers: PeerClient,
        membership: Membership,
        *,
        suspicion: float,
        query_timeout: float,
        strict: bool = False,
    ) -> None:
        self._suspicion = suspicion
        self._strict = strict
        # Per peer: the version of its filter it last said it has; the peers whose
        # filter held is older than that, or that have none held yet.
        self._versions: dict[str, int] = {}
        self._stale: set[str] = set()
        # Per peer: when it last said it held no actors.
        self._empty_at: dict[str, float] = {}
        #: Filters fetched, ever (a figure for benchmarks/).
        self.fetches = 0
        self._query_timeout = query_timeout
        self._gone: set[str] = set()
        # Peers whose filter could not be fetched fresh, or has not been since they
        # left: the one held may miss actors.
        self._unfetched: set[str] = set()
        # Per peer that left: the decision that removed it, once seen (see holders()).
        self._removals: dict[str, tuple[int, str] | None] = {}
        self.bloom = CountingBloom()
        self.filters: dict[str, BloomFilter] = {}
        self._catalog = catalog
        self._peers = peers
        self._membership = membership
        self._found: OrderedDict[str, str] = OrderedDict()
        self._rebuild_log: list[tuple[bool, str]] | None = None
        self._snapshot: BloomFilter | None = None
        self._snapshot_at = -math.inf

    # CatalogObserver: keep this node's filter in step with its table.

    def activated(self, actor_id: str) -> None:
        self.bloom.add(actor_id)
        if self._rebuild_log is not None:
            self._rebuild_log.append((True, actor_id))

    def forgotten(self, actor_id: str) -> None:
        self.bloom.remove(actor_id)
        if self._rebuild_log is not None:
            self._rebuild_log.append((False, actor_id))

    async def maintain(self) -> None:
        """Rebuild this node's filter if it is sized wrong for the actor count.

        A checkpoint every few thousand ids; the old filter keeps serving meanwhile,
        and what changes during the rebuild is replayed onto the new one.
        """
        if not self.bloom.needs_rebuild() or self._rebuild_log is not None:
            return
        ids = self._catalog.ids()
        fresh = CountingBloom(2 * len(ids))
        self._rebuild_log = []
        try:
            for start in range(0, len(ids), _REBUILD_SLICE):
                for actor_id in ids[start : start + _REBUILD_SLICE]:
                    fresh.add(actor_id)
                await trio.lowlevel.checkpoint()
            for added, actor_id in self._rebuild_log:
                (fresh.add if added else fresh.remove)(actor_id)
            fresh.version = self.bloom.version + 1
            self.bloom = fresh
        finally:
            self._rebuild_log = None

    def holders(self) -> list[str]:
        """The peers that may hold actors (see the class's docstring)."""
        membership = self._membership
        live = membership.peers(MemberState.ALIVE)
        self._gone &= set(membership.peers(MemberState.DOWN))  # back up: not gone
        suspects = [
            peer
            for peer in membership.peers(MemberState.DOWN)
            if peer not in self._gone and membership.down_for(peer) < self._suspicion
        ]
        # A peer that has left may have activated actors just before, after its filter
        # was last fetched: from the moment this node sees it removed, it is asked about
        # every id until its filter is fetched fresh (it is unfetched), for as long as a
        # down peer would be; then it is kept while that filter holds actors or moves on.
        removed = membership.peers(MemberState.REMOVED)
        if removed or self._removals:
            removals, self._removals = self._removals, {}
            for peer in removed:
                decision = self._removals[peer] = membership.decision(peer)
                if membership.removed_for(peer) >= self._suspicion:
                    self._unfetched.discard(peer)  # silent since: gone with its actors
                elif removals.get(peer, ()) != decision:  # (a removal not seen before)
                    self._unfetched.add(peer)
        leaving = [
            peer
            for peer in removed
            if peer in self._unfetched
            or (
                (bloom := self.filters.get(peer)) is not None
                and (bloom.count > 0 or peer in self._stale)
            )
        ]
        return live + suspects + leaving

    def heard_version(self, peer: str, version: int, actors: int | None = None) -> None:
        """``peer`` said its filter is at ``version`` (and holds ``actors``: none
        means an empty filter, which needs no fetching)."""
        self._versions[peer] = version
        known = self.filters.get(peer)
        if actors == 0 and self._membership.state(peer) is MemberState.ALIVE:
            self.filters[peer] = BloomFilter.empty(version)
            self._stale.discard(peer)
            self._unfetched.discard(peer)
            self._empty_at[peer] = trio.current_time()
        elif known is None or known.version != version:
            self._stale.add(peer)

    def gone(self, peer: str) -> None:
        """Nothing listens at ``peer`` any more: its actors are gone with it."""
        self._gone.add(peer)
        self.filters.pop(peer, None)
        self._unfetched.discard(peer)

    def found(self, actor_id: str) -> str | None:
        """The peer where ``actor_id`` was last found, if that peer is still live."""
        peer = self._found.get(actor_id)
        if peer is not None and self._membership.state(peer) is not MemberState.ALIVE:
            del self._found[actor_id]
            return None
        return peer

    def forget(self, actor_id: str) -> None:
        """The actor was not where it was found: ask again next time."""
        self._found.pop(actor_id, None)

    async def locate(self, actor_id: str, deadline: float) -> str | None:
        """The peer where ``actor_id`` is active, or None if no peer holds it.

        Asks, all at once, every peer that may hold actors and whose filter may hold
        the id, and returns the first that does. One that refuses the connection is
        gone. One that does not answer in time is taken not to hold it, unless
        ``strict``: then the call fails rather than risk a second activation. A
        checkpoint.

        Raises:
            PeerUnavailable: ``strict``, and a peer that may hold the id did not say
                whether it does.
        """
        peer = self.found(actor_id)
        if peer is not None:
            return peer
        down = set(self._membership.peers(MemberState.DOWN))
        candidates = [
            peer
            for peer in self.holders()
            if (peer in down and (not self._strict or self._owned_by(peer, actor_id)))
            or (peer in self._unfetched and peer not in down)  # (a down one: by ownership)
            or (bloom := self.filters.get(peer)) is None
            or actor_id in bloom
        ]
        if not candidates:
            return None
        path = "/query/" + quote(actor_id, safe="")
        holder: str | None = None
        # The peers that may hold it and have not said whether they do.
        silent = set(candidates) if self._strict else set()

        async def ask(peer: str) -> None:
            nonlocal holder
            try:
                answer = await self._peers.get(peer, path)
            except TowtruckError as exc:
                if not exc.remote and exc.details.get("delivered") is False:
                    self.gone(peer)
                    silent.discard(peer)
                return
            silent.discard(peer)
            if isinstance(answer, dict) and answer.get("exists") is True and holder is None:
                holder = peer
                nursery.cancel_scope.cancel()

        with trio.move_on_at(min(deadline, trio.current_time() + self._query_timeout)):
            async with trio.open_nursery() as nursery:
                for peer in candidates:
                    nursery.start_soon(ask, peer)
        if holder is not None:
            self._remember(actor_id, holder)
        elif silent:
            peer = min(silent)
            if peer in down:
                why = "which does not answer; it is not activated elsewhere until that node"
                why += " has had time to give it up"
            else:
                why = f"which did not say within {self._query_timeout} s whether it is;"
                why += " it is not activated elsewhere meanwhile"
            raise PeerUnavailable(
                f"actor {actor_id!r} may still be active on {peer}, {why}",
                actor=actor_id,
                peer=peer,
            )
        return holder

    async def duplicates(self, *, yield_to: Callable[[str, str], bool] | None = None) -> list[str]:
        """The ids active here that a peer holds too, by its answer to ``/query``
        (asked only where its filter holds the id). A checkpoint.

        Args:
            yield_to: ``yield_to(actor_id, peer)``: count a copy on ``peer`` only if
                this is true (only those peers are asked); every copy if None.
        """
        candidates = [
            (actor_id, peer)
            for actor_id in self._catalog.ids()
            for peer, bloom in self.filters.items()
            if actor_id in bloom and (yield_to is None or yield_to(actor_id, peer))
        ]
        found: list[str] = []
        limiter = trio.CapacityLimiter(_QUERIES_AT_ONCE)

        async def ask(actor_id: str, peer: str) -> None:
            async with limiter:
                try:
                    with trio.fail_after(self._query_timeout):
                        answer = await self._peers.get(peer, "/query/" + quote(actor_id, safe=""))
                except (TowtruckError, trio.TooSlowError):
                    return
            if isinstance(answer, dict) and answer.get("exists") is True:
                found.append(actor_id)

        async with trio.open_nursery() as nursery:
            for actor_id, peer in candidates:
                nursery.start_soon(ask, actor_id, peer)
        return sorted(set(found))

    async def refresh(
        self,
        *,
        fresh: bool = False,
        only: Iterable[str] | None = None,
        empty_since: float | None = None,
    ) -> None:
        """Fetch the filters of the live peers, and of removed peers that may still
        hold actors (see :meth:`holders`), that changed (by the version they said they
        have; ``fresh``: whatever they said); keep the last filter of down peers.
        ``only``: of these peers alone; ``empty_since``: not those that said they held
        no actors since then.

        ``fresh`` asks the peers for their filter as it is now rather than one
        cached for up to half a ``bloom_interval``. A peer that does not answer
        keeps its last filter; if it was asked ``fresh``, that filter may miss actors
        it holds, so it is asked about every id (see :meth:`locate`), and asked fresh
        again at each refresh until it answers. A checkpoint.
        """
        membership = self._membership
        only = None if only is None else set(only)
        holders = set(self.holders())
        for dropped in set(self.filters) - holders:
            del self.filters[dropped]
        self._unfetched &= holders
        wanted = set(holders) if only is None else only & holders
        if not fresh:  # only those that changed, those removed that held actors, and
            # those not fetched fresh when they had to be
            self._stale &= holders
            wanted &= self._stale | set(membership.peers(MemberState.REMOVED)) | self._unfetched
        if empty_since is not None:
            wanted = {p for p in wanted if self._empty_at.get(p, -math.inf) < empty_since}
        peers = [p for p in sorted(wanted) if membership.state(p) is not MemberState.DOWN]

        async def fetch(peer: str) -> None:
            known = self.filters.get(peer)
            query = [f"since={known.version}"] if known is not None else []
            as_is = fresh or peer in self._unfetched  # its filter as it is now
            left = self._removals.get(peer)  # (the removal it was asked after, if any)
            if as_is:
                query.append("fresh=1")
            path = "/getbloom" + ("?" + "&".join(query) if query else "")
            try:
                with trio.fail_after(self._query_timeout):
                    self.fetches += 1
                    answer = await self._peers.get(peer, path)
                unchanged = isinstance(answer, dict) and answer.get("unchanged")
                # (set again even if unchanged: another refresh may have dropped it since)
                if known is not None and unchanged:
                    fetched = known
                else:
                    fetched = BloomFilter.from_payload(answer)
                self.filters[peer] = fetched
                if fetched.version >= self._versions.get(peer, -1):
                    self._stale.discard(peer)
                if self._removals.get(peer) == left:  # (not if it left while asked)
                    self._unfetched.discard(peer)
            except (TowtruckError, ValueError, trio.TooSlowError) as exc:
                logger.debug("no bloom filter from %s: %r", peer, exc)
                if as_is:
                    self._unfetched.add(peer)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(fetch, peer)

    def _owned_by(self, peer: str, actor_id: str) -> bool:
        """Whether ``peer`` owned ``actor_id`` while it was in placement (it may have
        activated it since its filter was last fetched)."""
        return placement.owner(actor_id, (*self._membership.placement(), peer)) == peer

    def snapshot(self, *, max_age: float = 0.0) -> BloomFilter:
        """This node's filter, as ``/getbloom`` serves it: taken now, or up to
        ``max_age`` seconds ago (a large filter costs milliseconds to take, and under a
        stream of activations it changes on every call)."""
        now = trio.current_time()
        if self._snapshot is None or now - self._snapshot_at > max_age:
            self._snapshot, self._snapshot_at = self.bloom.snapshot(), now
        return self._snapshot

    def _remember(self, actor_id: str, peer: str) -> None:
        self._found[actor_id] = peer
        self._found.move_to_end(actor_id)
        if len(self._found) > FOUND_CACHE_SIZE:
            self._found.popitem(last=False)
