"""How a clustered node keeps its view of the cluster: joining, adding and removing
members, leaving, heartbeats (failure detection, stall detection), settling a change of
membership before activating again, fetching the peers' bloom filters, and giving up
the activations a peer holds too. The call path is :mod:`towtruck.cluster.router`.

After any change of membership a node *settles* before it activates ids it owns again:
it pushes its view to every peer and waits for each to acknowledge (from then on the
peer forwards ids it no longer owns instead of activating them), then fetches every
peer's bloom filter (which by then holds whatever the peer activated under the old
view). Losing a node needs no settling: rendezvous hashing moves only the lost node's
ids; their actors went with it, or, if the node was only too slow to answer
heartbeats, the owner finds them through the last filter the node served.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import trio

from ..catalog import Catalog
from ..errors import (
    CallTimeout,
    Forbidden,
    InvalidAddress,
    NotFound,
    PeerUnavailable,
    SettingsError,
    TowtruckError,
    Unauthorized,
)
from ..ids import Address
from ..settings import Settings
from . import discovery, wire
from .credentials import KeyRefusals
from .directory import Directory, PeerClient
from .duplicates import Duplicates, give_up
from .membership import Membership, MemberState

if TYPE_CHECKING:
    from .registrar import Registrar

__all__ = ["Gossip"]

logger = logging.getLogger("towtruck.cluster")

# Rounds of settling at most before a node goes on with the view it has.
_SETTLE_ROUNDS: Final = 5


class Gossip:
    """A node's part in the membership protocol. Run :meth:`services` in the node's
    nursery and call :meth:`start` once the node serves HTTP.

    Args:
        me: The ``host:port`` peers reach this node at.
        settings: The node's settings (heartbeats, bloom interval, protocol timings).
        catalog: This node's actor table (duplicates found are deactivated there).
        membership: The view it keeps.
        directory: Where actors are: the filters it refreshes.
        peers: The client to talk to peers with.
    """

    def __init__(
        self,
        me: str,
        settings: Settings,
        catalog: Catalog,
        membership: Membership,
        directory: Directory,
        peers: PeerClient,
    ) -> None:
        self.me = me
        self.membership = membership
        self.directory = directory
        self._catalog = catalog
        self._peers = peers
        self._protocol_timeout = settings.protocol_timeout
        self._heartbeat_interval = settings.heartbeat_interval
        # A lane with calls waiting and nothing from the peer for this long is stalled.
        self._stall_after = settings.heartbeat_interval * settings.heartbeat_misses
        self._bloom_interval = settings.bloom_interval
        self._settled = trio.Event()  # set once the view is settled: see the module doc
        self._settle_due = trio.Event()
        self._bloom_due = trio.Event()
        self._duplicates_due = Duplicates.NONE
        # The joined peers as of the last settling (see _settle).
        self._joined_seen: frozenset[str] = frozenset()
        # Per peer: how many times it said it took this node for down, as last heard.
        self._downs_heard: dict[str, int] = {}
        # Peers whose last answer refused this node's cluster key.
        self._key_refusals = KeyRefusals()
        self._left = False
        self._settle_extra: set[str] = set()
        # A node down this long is forgotten (it rejoins like a new one), and so is
        # a removal this old: the cluster's memory of departed nodes stays bounded.
        self._forget_after = settings.forget_after or max(600.0, 100 * settings.heartbeat_interval)
        #: Keeps this node's row in a membership table, if one is configured.
        self.registrar: Registrar | None = None
        self._peer_dns = Address.parse(settings.peer_dns) if settings.peer_dns else None
        self._dns_failing = False

    def services(self) -> list[Callable[[], Awaitable[None]]]:
        """The loops to run for as long as the node runs: heartbeats, settling, and
        refreshing the peers' filters."""
        services: list[Callable[[], Awaitable[None]]] = [
            self._heartbeat_periodically,
            self._settle_when_due,
            self._refresh_filters_periodically,
        ]
        if self._peer_dns is not None:
            services.append(self._discover_periodically)
        return services

    @property
    def settled(self) -> bool:
        """Whether this node's view is settled (see the module's docstring)."""
        return self._settled.is_set()

    async def wait_settled(self, deadline: float) -> None:
        """Wait until this node's view is settled.

        Raises:
            CallTimeout: not by ``deadline``.
        """
        with trio.move_on_at(deadline):
            await self._settled.wait()
            return
        raise CallTimeout(
            f"{self.me} is still settling a change of cluster membership", node=self.me
        )

    def refused(self, peer: str) -> None:
        """A call to ``peer`` found nothing listening there: it is down now."""
        if self.membership.missed(peer, certain=True):
            logger.warning("%s refused a connection: out of placement", peer)
            self._bloom_due.set()

    # Membership: joining, adding, removing, leaving.

    async def start(self, peers: tuple[str, ...]) -> None:
        """Join the cluster through ``peers`` (the ``--peer`` addresses) and settle.

        A peer that does not answer stays a member, out of placement until it answers
        a heartbeat. Calls that would activate an actor wait until this returns.

        Raises:
            SettingsError: every one of ``peers`` refused this node's cluster key: it
                would otherwise serve as a cluster of its own, beside theirs.
        """
        seeds = [peer for peer in peers if peer != self.me]
        # What DNS names is joined before the view settles: a node does not settle alone
        # (and say it is ready) in a cluster it could have found.
        seeds += [peer for peer in await self._resolve_peers() if peer not in [*seeds, self.me]]
        if self.registrar is not None:  # the table's rows are seeds too
            seeds += [peer for peer in await self.registrar.join() if peer not in seeds]
        for peer in seeds:
            self.membership.add(peer, placed=False)  # placed once it answers
        await self._push(self.membership.peers())
        if seeds and all(peer in self._key_refusals.why for peer in seeds):
            refusals = ", ".join(f"{peer} ({self._key_refusals.why[peer]})" for peer in seeds)
            raise SettingsError(
                f"--cluster-key: every peer refused this node's cluster key: {refusals};"
                " give every node of the cluster the same key"
            )
        for peer in self.membership.peers(MemberState.DOWN):
            if peer not in self._key_refusals.why:
                logger.warning("could not join through %s yet; will keep trying", peer)
        await self._settle()
        if self.registrar is not None:
            await self.registrar.activate()

    async def join_found(self, addresses: list[str], *, readd: bool = False) -> None:
        """Join the nodes found at ``addresses`` (by DNS, in a membership table) that
        this node has not heard of (``readd``: or has taken out), as ``--peer`` seeds
        are joined: each is sent a heartbeat, and placed once it answers."""
        wanted = (None, MemberState.REMOVED) if readd else (None,)
        new = [a for a in addresses if a != self.me and self.membership.state(a) in wanted]
        if not new or self._left:
            return
        logger.info("found %s: joining", ", ".join(new))
        for peer in new:
            self.membership.add(peer, placed=False)  # placed once it answers
        with trio.move_on_after(self._protocol_timeout):
            await self._push(new)
        self._settle_soon()

    async def add_peer(self, address: str) -> None:
        """Bring ``address`` (and every node it knows) into the cluster (``/addserver``);
        returns once this node has settled the change.

        Raises:
            InvalidAddress: it is this node's own address.
            PeerUnavailable: it did not answer; nothing was changed.
        """
        if address == self.me:
            raise InvalidAddress(f"{address} is this node's own address", address=address)
        try:
            with trio.fail_after(self._protocol_timeout):
                hello = self._hello(address)
                reply = await self._peers.post(address, "/cluster/heartbeat", hello)
        except (TowtruckError, trio.TooSlowError) as exc:
            if isinstance(exc, (Unauthorized, Forbidden)):
                raise  # it answered: with this node's cluster key, it refuses to join
            reason = exc.message if isinstance(exc, TowtruckError) else "timed out"
            raise PeerUnavailable(f"{address} did not answer: {reason}", peer=address) from exc
        name = wire.hello_name(address, reply)  # joined under the name it goes by, never an alias
        if name == self.me:
            raise InvalidAddress(f"{address} is another name of this node", address=address)
        self.membership.add(name)
        logger.info("%s added to the cluster", name)
        self._answered(name, reply)
        await self._settle_in_background()

    async def remove_peer(self, address: str) -> None:
        """Take ``address`` out of the cluster, on every node and on itself
        (``/removeserver``); returns once this node has settled the change.

        Raises:
            InvalidAddress: it is this node's own address.
            NotFound: it is not a member.
        """
        if address == self.me:
            raise InvalidAddress(f"{address} is this node's own address", address=address)
        if self.membership.state(address) in (None, MemberState.REMOVED):
            raise NotFound(f"{address} is not a member of this cluster", address=address)
        self.membership.remove(address)
        logger.info("%s removed from the cluster", address)
        if self.registrar is not None:
            await self.registrar.remove(address)
        await self._settle_in_background(extra=[address])

    async def leave(self) -> bool:
        """Leave the cluster (a graceful shutdown does this first): tell every peer, so
        they stop placing actors here, and place nothing here either. Returns whether
        there are live peers to send calls to meanwhile. Bounded by
        the ``protocol_timeout`` setting."""
        if self.registrar is not None:
            with trio.move_on_after(self._protocol_timeout):
                await self.registrar.leave()
        peers = self.membership.peers(MemberState.ALIVE)
        if peers and not self._left:
            self._left = True
            logger.info("leaving the cluster (%d live peers)", len(peers))
            self.membership.remove(self.me)
            with trio.move_on_after(self._protocol_timeout):
                await self._push(peers)
        return bool(peers)

    def handle_heartbeat(self, hello: Any) -> dict[str, Any]:
        """A peer's heartbeat (or pushed change): take in its records, answer ours and
        the name this node goes by (so an alias of it is recognised as such)."""
        records = wire.hello_records(hello)
        if records and self._merge(records):
            self._settle_soon()
        sender = wire.hello_sender(hello)
        if sender is not None and self.membership.state(sender) is not None:
            self._note_downs(sender, hello)
            return self._hello(sender)
        return self._hello()

    async def refresh_filters(self) -> list[str]:
        """Fetch the peers' bloom filters now (``/updateblooms``); returns the peers."""
        await self.directory.refresh(fresh=True)
        return sorted(self.directory.filters)

    def members(self) -> list[dict[str, str]]:
        """This node and its joined peers with their state, for ``/health``."""
        listed = [self.me, *self.membership.peers()]
        return [{"address": a, "state": _state(self.membership, a)} for a in listed]

    # Settling a change of membership.

    def _settle_soon(self, extra: Iterable[str] = ()) -> None:
        """Have the node settle (pushing to ``extra`` peers too), in the background."""
        if self._settled.is_set():
            self._settled = trio.Event()
        self._settle_extra.update(extra)
        self._settle_due.set()

    async def _settle_in_background(self, extra: Iterable[str] = ()) -> None:
        """Settle, and wait for it: in the node's own task, so that a request that
        asked for the change and gave up cannot cut the settling short."""
        self._settle_soon(extra)
        with trio.move_on_after(3 * self._protocol_timeout):
            await self._settled.wait()

    async def _settle_when_due(self) -> None:
        while True:
            await self._settle_due.wait()
            self._settle_due = trio.Event()
            extra, self._settle_extra = self._settle_extra, set()
            await self._settle(list(extra))

    async def _settle(self, extra: list[str] | None = None) -> None:
        """Push this node's view to every live peer (and ``extra``) and wait for their
        acknowledgements, then fetch their filters fresh; again while decisions keep
        changing meanwhile, up to ``_SETTLE_ROUNDS`` rounds (a cluster whose members
        keep changing must not hold up its activations for ever: the next change
        settles again). Calls that would activate an actor wait for this."""
        if self._settled.is_set():
            self._settled = trio.Event()
        for _ in range(_SETTLE_ROUNDS):
            decisions = self.membership.decisions
            await self._push(self.membership.peers(MemberState.ALIVE) + (extra or []))
            extra = None
            await self.directory.refresh(fresh=True)
            if self.membership.decisions == decisions:
                break
        else:
            logger.warning(
                "the cluster's members changed in each of %d rounds of settling: going on"
                " with this view (%s)",
                _SETTLE_ROUNDS,
                ", ".join(self.membership.placement()),
            )
        joined = frozenset(self.membership.peers())
        if joined - self._joined_seen:
            # Nodes joined (this node added back, two clusters merged): while apart, an
            # id may have been activated on both sides. One activation stays.
            await self._give_up_duplicates(Duplicates.PLACEMENT, among=joined - self._joined_seen)
        self._joined_seen = joined
        self._settled.set()

    async def _push(self, peers: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            for peer in set(peers):
                nursery.start_soon(self._heartbeat, peer, self._protocol_timeout)

    # Background work, run in the node's nursery.

    async def _discover_periodically(self) -> None:
        """Join the addresses ``peer_dns`` resolves to, every heartbeat interval (see
        :mod:`towtruck.cluster.discovery`); the first round is :meth:`start`'s."""
        while True:
            await trio.sleep(self._heartbeat_interval)
            await self.join_found(await self._resolve_peers())

    async def _resolve_peers(self) -> list[str]:
        """The addresses ``peer_dns`` resolves to now (none if it does not resolve
        within the protocol timeout: said once, until it resolves again)."""
        if self._peer_dns is None:
            return []
        name, port = self._peer_dns.host, self._peer_dns.port
        with trio.move_on_after(self._protocol_timeout):
            try:
                found = await discovery.resolve(name, port)
            except OSError as exc:
                if not self._dns_failing:
                    logger.warning("%s:%d does not resolve (%s); will keep trying", name, port, exc)
                self._dns_failing = True
            else:
                self._dns_failing = False
                return found
        return []

    async def _heartbeat_periodically(self) -> None:
        last = trio.current_time()
        while True:
            started = trio.current_time()
            # A round takes about two intervals at most. Far longer, and this node was
            # stalled (a stopped process, a frozen VM) long enough for its peers to take
            # it for down and activate its actors afresh: see _give_up_duplicates.
            stalled = started - last
            long = self._heartbeat_interval * (self.membership.misses_allowed + 2)
            if stalled > long and self.membership.peers():  # alone, there is no elsewhere
                logger.warning(
                    "this node did not run for %.1f s: looking for its actors activated"
                    " elsewhere meanwhile",
                    stalled,
                )
                self._duplicates_due = Duplicates.ALL
                self._bloom_due.set()
            last = started
            async with trio.open_nursery() as nursery:
                for peer in self.membership.peers():
                    nursery.start_soon(
                        partial(self._heartbeat, peer, self._heartbeat_interval, watch=True)
                    )
            expired = self.membership.expire(after=self._forget_after)
            if expired:
                logger.info("forgot %s: gone too long", ", ".join(expired))
                self._peers.prune(set(self.membership.peers(MemberState.ALIVE, MemberState.DOWN)))
            await trio.sleep_until(started + self._heartbeat_interval)

    async def _heartbeat(self, peer: str, seconds: float, *, watch: bool = False) -> None:
        """Exchange views with ``peer``; no answer within ``seconds`` is a miss.
        ``watch``: also check that the peer answers the calls sent to it."""
        try:
            with trio.fail_after(seconds):
                reply = await self._peers.post(peer, "/cluster/heartbeat", self._hello(peer))
        except (TowtruckError, trio.TooSlowError) as exc:
            if isinstance(exc, (Unauthorized, Forbidden)):
                self._key_refusals.refused(peer, exc)
            if self.membership.missed(peer):
                self._taken_out(peer, f"missed {self.membership.misses_allowed} heartbeats")
            return
        if watch and self._peers.stalled(peer, self._stall_after):
            # It answers heartbeats, but neither the calls on its lane nor a probe
            # there: calls sent to it would wait for their deadlines. As good as down.
            self._answered(peer, reply, alive=False)
            if self.membership.missed(peer, certain=True):
                self._taken_out(
                    peer,
                    f"answers heartbeats but nothing on its lane, calls waiting,"
                    f" for {self._stall_after:g} s",
                )
            else:
                self._peers.interrupt(peer)
            return
        self._answered(peer, reply)

    def _taken_out(self, peer: str, why: str) -> None:
        """``peer`` has just left placement for not answering."""
        logger.warning("%s %s: out of placement", peer, why)
        # Calls on their way to it (a hung process, a lost host) would wait for their
        # deadlines: they fail now, as interrupted (they may have run).
        self._peers.interrupt(peer)
        self._bloom_due.set()

    def _answered(self, peer: str, reply: Any, *, alive: bool = True) -> str:
        """Take in a peer's answer to a heartbeat; returns the name it goes by. An
        address that turns out to be an alias (``localhost:8080`` for
        ``127.0.0.1:8080``) is taken out: one node must have one name, or placement
        would count it twice and send calls round in circles."""
        name = wire.hello_name(peer, reply)
        self._key_refusals.cleared(peer)
        if name != peer and self.membership.state(peer) in (MemberState.ALIVE, MemberState.DOWN):
            self.membership.remove(peer)  # a tombstone, so that no peer gossips it back
        if self._merge(wire.hello_records(reply)):
            self._settle_soon()
        self._note_downs(name, reply)
        if alive and self.membership.heard_from(name):
            logger.info("%s answers: in placement", name)
            self._bloom_due.set()
        return name

    def _merge(self, records: Any) -> bool:
        """Take in a peer's membership records, logging the nodes that joined or left
        the cluster through them; whether anything changed."""
        before = set(self.membership.peers())
        changed = self.membership.merge(records)
        if changed:
            after = set(self.membership.peers())
            if joined := sorted(after - before):
                logger.info("joined the cluster: %s", ", ".join(joined))
            if left := sorted(before - after):
                logger.info("left the cluster: %s", ", ".join(left))
        return changed

    def _note_downs(self, peer: str, hello: Any) -> None:
        """Take in how many times ``peer`` says it took this node for down. A change
        means it did so again (or forgot this node): meanwhile it may have activated
        this node's actors afresh, whatever the reason (a stall here, a lost link)."""
        downs = wire.hello_downs(hello)
        if downs is None:
            return
        heard = self._downs_heard.get(peer)
        self._downs_heard[peer] = downs
        if downs != (heard or 0):
            logger.warning(
                "%s took this node for down meanwhile: looking for its actors activated elsewhere",
                peer,
            )
            self._duplicates_due = Duplicates.ALL
            self._bloom_due.set()

    async def _refresh_filters_periodically(self) -> None:
        while True:
            with trio.move_on_after(self._bloom_interval):
                await self._bloom_due.wait()
            self._bloom_due = trio.Event()
            if self._duplicates_due is not Duplicates.NONE:
                due, self._duplicates_due = self._duplicates_due, Duplicates.NONE
                await self._give_up_duplicates(due)  # fetches the filters itself, fresh
            else:
                await self.directory.refresh()
            await self.directory.maintain()

    async def _give_up_duplicates(
        self, which: Duplicates = Duplicates.ALL, among: frozenset[str] | None = None
    ) -> None:
        """Deactivate the actors here that a peer holds too (see
        :func:`~towtruck.cluster.duplicates.give_up`)."""
        await give_up(self.me, self._catalog, self.directory, which, among)

    def _hello(self, peer: str | None = None) -> dict[str, Any]:
        """A heartbeat, to ``peer`` (or the answer to one): this node's name and view,
        and how many times it took ``peer`` for down."""
        downs = self.membership.downs(peer) if peer is not None else None
        return wire.hello(self.me, self.membership.records(), downs)


def _state(membership: Membership, address: str) -> str:
    state = membership.state(address)
    return state.value if state is not None else "unknown"
