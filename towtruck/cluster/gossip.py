"""How a clustered node keeps its view of the cluster: joining, adding and removing
members, leaving, failure detection, settling a change of membership before
activating again, fetching the peers' bloom filters, giving up the activations a
peer holds too, and stopping to activate when it reaches only a minority. The call
path is :mod:`towtruck.cluster.router`.

**Failure detection** is SWIM's (Das et al., 2002), so that what a node spends on it
does not grow with the cluster: every heartbeat interval a node probes
``probe_peers`` peers, taking them in turn from a shuffled list (every peer, when it
has no more than that). A peer that does not answer is probed again through
``indirect_probes`` others; if none reaches it, it is *suspected*, and a suspect not
heard from again within ``heartbeat_misses - 1`` intervals (at least ``4 log10 N`` in a
cluster of N nodes larger than ``probe_peers + 1``) is *down*: out of placement. What a node finds rides on the heartbeats as rumours
(:class:`~towtruck.cluster.membership.Membership`); a node that hears it is suspected
answers with a higher incarnation. A peer that refuses a connection is down at once.
Each heartbeat carries a digest of the sender's decisions: only when two digests
differ do the two nodes exchange every decision.

**Settling.** After a change of membership a node settles before it activates ids it
owns again. Rendezvous hashing moves ids only to a node that joined, and away from one
that left, so settling is about the nodes that changed: a node pushes its view to the
nodes that joined (a joining node: to every node) and waits for each to acknowledge
(from then on the peer forwards ids it no longer owns instead of activating them), then
fetches the filters of the nodes that joined or left (which by then hold whatever they
activated under the old view). Losing a node needs no settling: its ids move to the
survivors; its actors went with it, or, if the node was only too slow to answer, the
owner finds them through the last filter the node served.

**Partitions.** With ``partition="keep-majority"`` (Akka's default strategy), a node
that reaches fewer than half of the agreed view (exactly half: without the lowest
address of it) activates nothing (:class:`~towtruck.errors.MinorityPartition`, 503)
and gives up its actors, while the majority waits for a peer that stopped answering to
have seen that before it activates the ids that peer may hold (see
:class:`~towtruck.cluster.directory.Directory`). It forgets no member while it is in
the minority, so it cannot become a majority of a smaller view of its own.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import trio

from ..activation import DeactivationReason
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
from .health import LocalHealth
from .membership import Heard, Membership, MemberState

if TYPE_CHECKING:
    from .registrar import Registrar

__all__ = ["Gossip"]

logger = logging.getLogger("towtruck.cluster")

# Rounds of settling at most before a node goes on with the view it has.
_SETTLE_ROUNDS: Final = 5
# Rumours piggybacked on one message at most.
_GOSSIP_PER_MESSAGE: Final = 8


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
        health: How late this node's timers run (see :mod:`~towtruck.cluster.health`);
            a new one if not given.
    """

    def __init__(
        self,
        me: str,
        settings: Settings,
        catalog: Catalog,
        membership: Membership,
        directory: Directory,
        peers: PeerClient,
        health: LocalHealth | None = None,
    ) -> None:
        self.me = me
        self.membership = membership
        self.directory = directory
        self._catalog = catalog
        self._peers = peers
        self._protocol_timeout = settings.protocol_timeout
        self._heartbeat_interval = settings.heartbeat_interval
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
        # Peers back in placement since the last settling: ids move back to them.
        self._returned: set[str] = set()
        # A node down this long is forgotten (it rejoins like a new one), and so is
        # a removal this old: the cluster's memory of departed nodes stays bounded.
        self._forget_after = settings.forget_after or max(600.0, 100 * settings.heartbeat_interval)
        #: Keeps this node's row in a membership table, if one is configured.
        self.registrar: Registrar | None = None
        self._peer_dns = Address.parse(settings.peer_dns) if settings.peer_dns else None
        self._dns_failing = False
        self._probe_peers = settings.probe_peers
        self._indirect_probes = settings.indirect_probes
        self._misses = settings.heartbeat_misses
        self._keep_majority = settings.partition == "keep-majority"
        self._in_majority = True
        # The peers in the order they are probed, and the next one's place.
        self._probe_order: list[str] = []
        self._probe_next = 0
        self._probing: set[str] = set()  # the peers being probed now
        self._suspected = trio.Event()  # set when a suspicion may have begun
        #: How late this node's own timers fire: its timeouts grow while they do.
        self.health = health or LocalHealth(settings.heartbeat_interval)
        # When this node may next exchange every decision with a peer whose differ.
        self._sync_interval = 5 * settings.heartbeat_interval
        self._next_sync = -math.inf
        #: Where the probe order and the indirect probes are drawn from (a simulation
        #: seeds it).
        self.random = random.Random(me)
        #: Heartbeats and answers sent and bytes they took (what failure detection and
        #: gossip cost: see benchmarks/).
        self.sent = 0

    def services(self) -> list[Callable[[], Awaitable[None]]]:
        """The loops to run for as long as the node runs: heartbeats, settling, and
        refreshing the peers' filters."""
        services: list[Callable[[], Awaitable[None]]] = [
            self._heartbeat_periodically,
            self._end_suspicions,
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

    @property
    def activating(self) -> bool:
        """Whether this node may activate actors: false while it reaches only a
        minority of the cluster with ``partition="keep-majority"``."""
        return not self._keep_majority or self.membership.majority()

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
        await self._push(self.membership.peers(), sync=True)
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
            await self._push(new, sync=True)
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
                reply = await self._send(address, self._hello(address, full=True))
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
        # Every peer hears of it now, not by gossip: the removed node's ids move to them.
        await self._settle_in_background(extra=[address, *self.membership.peers(MemberState.ALIVE)])

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

    async def handle_heartbeat(self, hello: Any) -> dict[str, Any]:
        """A peer's heartbeat (or pushed change): take in its rumours and records,
        answer ours and the name this node goes by (so an alias of it is recognised as
        such), and every decision if the digests differ. A heartbeat that asks this node
        to probe another (``probe``) is answered once that probe is (``reached``)."""
        self._take(hello)
        sender = wire.hello_sender(hello)
        known = sender is not None and self.membership.state(sender) is not None
        if known:
            assert sender is not None
            self._note_downs(sender, hello)
            self._heard_bloom(sender, hello)
        # Every decision, to a stranger (it joins) or a peer that asks, if they differ.
        differ = wire.hello_str(hello, "digest") != self.membership.digest()
        full = differ and (not known or hello.get("sync") is True)
        answer = self._hello(sender if known else None, full=full)
        target = wire.hello_str(hello, "probe")
        if target is not None:
            answer["reached"] = await self._relay(target)
        return answer

    async def _relay(self, target: str) -> bool:
        """Probe ``target`` for a peer that could not reach it; whether it answered."""
        try:
            Address.parse(target)
        except InvalidAddress:
            return False
        if self.membership.state(target) in (None, MemberState.REMOVED, MemberState.SELF):
            return False
        try:  # half an interval: the answer has to make its way back within one
            with trio.fail_after(self._heartbeat_interval / 2):
                reply = await self._send(target, self._hello(target))
        except (TowtruckError, trio.TooSlowError):
            return False
        self._answered(target, reply)
        return True

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
        """Push this node's view to the peers that joined since it last settled (and
        ``extra``) and wait for their acknowledgements, then fetch fresh the filters of
        the peers that joined or left; again while decisions keep changing meanwhile,
        up to ``_SETTLE_ROUNDS`` rounds (a cluster whose members keep changing must not
        hold up its activations for ever: the next change settles again). Calls that
        would activate an actor wait for this."""
        if self._settled.is_set():
            self._settled = trio.Event()
        membership = self.membership
        seen = covered = self._joined_seen
        returned: set[str] = set()
        for _ in range(_SETTLE_ROUNDS):
            decisions = membership.decisions
            joined = frozenset(membership.peers())
            changed, covered = (joined ^ covered), joined
            back, self._returned = self._returned, set()
            returned |= back
            alive = set(membership.peers(MemberState.ALIVE))
            pushed_at = trio.current_time()
            # Only a node joining gains ids (rendezvous hashing moves ids to a node that
            # joins, never to the others): it makes sure every node knows it first.
            await self._push(sorted(alive if not seen else ()))
            await self._push(sorted(extra or ()), full=True)
            extra = None
            # A peer that answered the push saying it holds no actors needs no fetch:
            # it knew of this node then, and activates none of this node's ids since.
            empty_since = pushed_at if not seen else None
            await self.directory.refresh(fresh=True, only=changed | back, empty_since=empty_since)
            if membership.decisions == decisions and not self._returned:
                break
        else:
            logger.warning(
                "the cluster's members changed in each of %d rounds of settling: going on"
                " with this view (%s)",
                _SETTLE_ROUNDS,
                ", ".join(membership.placement()),
            )
        joined = frozenset(membership.peers())
        if (joined - seen) | returned:
            # Nodes joined or came back (this node added back, two clusters merged, a
            # partition healed): while apart, an id may have been activated on both
            # sides. One activation stays.
            among = (joined - seen) | returned
            await self._give_up_duplicates(Duplicates.PLACEMENT, among=frozenset(among))
        self._joined_seen = joined
        self._settled.set()

    async def _push(self, peers: list[str], *, full: bool = False, sync: bool = False) -> None:
        """Send ``peers`` this node's own record (``full``: every decision it knows;
        ``sync``: asking for theirs), and wait for their answers."""
        async with trio.open_nursery() as nursery:
            for peer in sorted(set(peers)):
                nursery.start_soon(partial(self._push_one, peer, full=full, sync=sync))

    async def _push_one(self, peer: str, *, full: bool, sync: bool) -> None:
        try:
            with trio.fail_after(self._protocol_timeout):
                await self._exchange(peer, full=full, own=True, sync=sync)
        except (TowtruckError, trio.TooSlowError) as exc:
            if isinstance(exc, (Unauthorized, Forbidden)):
                self._key_refusals.refused(peer, exc)
            elif self.membership.missed(peer):  # a miss: it may be about to listen
                self._taken_out(peer, f"missed {self.membership.misses_allowed} messages")

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
        async with trio.open_nursery() as probes:
            await self._heartbeat_rounds(probes)

    async def _heartbeat_rounds(self, probes: trio.Nursery) -> None:
        """Every interval: probe a few peers (in the background), take out the peers
        suspected too long, and see whether this node still reaches a majority."""
        last = trio.current_time()
        while True:
            started = trio.current_time()
            # A round takes a moment (its probes run in the background). Far longer, and this node was
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
            for peer in self._probe_targets():
                if peer not in self._probing:  # a probe takes up to two intervals
                    self._probing.add(peer)
                    probes.start_soon(self._probe, peer)
            await self._check_majority()
            if self._in_majority or not self._keep_majority:
                expired = self.membership.expire(after=self._forget_after)
                if expired:
                    logger.info("forgot %s: gone too long", ", ".join(expired))
                    self._peers.prune(
                        set(self.membership.peers(MemberState.ALIVE, MemberState.DOWN))
                    )
            await trio.sleep_until(started + self._heartbeat_interval)
            self.health.fired(trio.current_time() - started - self._heartbeat_interval, round_=True)

    async def _end_suspicions(self) -> None:
        """Take out of placement each suspect not heard from in time, as its time
        comes (woken when a suspicion begins)."""
        while True:
            suspect_for = self._suspect_for()
            for peer in self.membership.overdue(suspect_for):
                self._taken_out(peer, f"suspected for {suspect_for:.3g} s")
            wake = min(
                self.membership.next_overdue(suspect_for),
                trio.current_time() + self._heartbeat_interval,
            )
            with trio.move_on_at(wake) as waiting:
                await self._suspected.wait()
            if waiting.cancelled_caught:
                self.health.fired(trio.current_time() - wake)
            self._suspected = trio.Event()

    def _suspect_for(self) -> float:
        """How long a suspect has to answer before it is down: ``heartbeat_misses - 1``
        intervals; in a cluster larger than the peers probed each interval, where a
        refutation takes longer to reach every node, 4 log10 N intervals at least (as
        memberlist does)."""
        size = len(self.membership.peers()) + 1
        spread = 4 * math.log10(size) if size > self._probe_peers + 1 else 0.0
        return self._timeout() * max(self._misses - 1, spread)

    def _timeout(self) -> float:
        """How long a probe waits for an answer: an interval, longer while this node's
        own timers run late (see ``health``)."""
        return self._heartbeat_interval * self.health.multiplier

    def _probe_targets(self) -> list[str]:
        """The peers to probe this round: ``probe_peers`` of them, in turn from a list
        shuffled once per pass, or all of them if there are no more."""
        peers = self.membership.peers()
        if len(peers) <= self._probe_peers:
            return peers
        targets: list[str] = []
        while len(targets) < self._probe_peers:
            if self._probe_next >= len(self._probe_order):
                self._probe_order = list(peers)
                self.random.shuffle(self._probe_order)
                self._probe_next = 0
            peer = self._probe_order[self._probe_next]
            self._probe_next += 1
            if peer not in targets and self.membership.state(peer) in (
                MemberState.ALIVE,
                MemberState.DOWN,
            ):
                targets.append(peer)
        return targets

    async def _probe(self, peer: str) -> None:
        """Probe ``peer``: a heartbeat, then (if it was up) the same through
        ``indirect_probes`` others; no answer from any makes it suspected."""
        try:
            await self._probe_once(peer)
        finally:
            self._probing.discard(peer)

    async def _probe_once(self, peer: str) -> None:
        deadline = trio.current_time() + self._timeout()
        try:
            with trio.fail_at(deadline):
                reply = await self._exchange(peer)
        except (TowtruckError, trio.TooSlowError) as exc:
            if isinstance(exc, trio.TooSlowError):
                self.health.fired(trio.current_time() - deadline)
            if isinstance(exc, (Unauthorized, Forbidden)):
                self._key_refusals.refused(peer, exc)
            if isinstance(exc, TowtruckError) and exc.details.get("delivered") is False:
                if self.membership.missed(peer, certain=True):
                    self._taken_out(peer, "refused a connection")
            elif self.membership.state(
                peer
            ) is MemberState.ALIVE and not await self._probe_through_others(peer):
                self.membership.suspect(peer)
                self._suspected.set()
            return
        # A lane with calls waiting and nothing from the peer for this long is stalled.
        stall_after = self._timeout() * self._misses
        if self._peers.stalled(peer, stall_after):
            # It answers heartbeats, but neither the calls on its lane nor a probe
            # there: calls sent to it would wait for their deadlines. As good as down.
            if self.membership.missed(peer, certain=True):
                self._taken_out(
                    peer,
                    f"answers heartbeats but nothing on its lane, calls waiting,"
                    f" for {stall_after:.3g} s",
                )
            else:
                self._peers.interrupt(peer)
            return
        del reply

    async def _probe_through_others(self, peer: str) -> bool:
        """Whether one of ``indirect_probes`` live peers reached ``peer``."""
        others = [p for p in self.membership.peers(MemberState.ALIVE) if p != peer]
        helpers = self.random.sample(others, min(self._indirect_probes, len(others)))
        reached = False

        async def ask(helper: str) -> None:
            nonlocal reached
            try:
                reply = await self._send(helper, self._hello(helper, probe=peer))
            except TowtruckError:
                return
            self._answered(helper, reply)
            if isinstance(reply, dict) and reply.get("reached") is True:
                reached = True
                nursery.cancel_scope.cancel()

        with trio.move_on_after(self._timeout()) as waiting:
            async with trio.open_nursery() as nursery:
                for helper in helpers:
                    nursery.start_soon(ask, helper)
        if waiting.cancelled_caught:
            self.health.fired(trio.current_time() - waiting.deadline)
        if reached:
            self.membership.heard_from(peer)
        return reached

    async def _exchange(
        self, peer: str, *, full: bool = False, own: bool = False, sync: bool = False
    ) -> Any:
        """Send ``peer`` a heartbeat (``full``: with every decision; ``own``: with this
        node's own; ``sync``: asking for every decision back) and take in its answer;
        if the answer shows that their decisions differ, exchange every one (at most
        once per sync interval). Returns the answer. Bounded by the caller's cancel
        scope."""
        reply = await self._send(peer, self._hello(peer, full=full, own=own, sync=sync or full))
        self._answered(peer, reply)
        differ = wire.hello_str(reply, "digest") not in (None, self.membership.digest())
        if differ and not full and trio.current_time() >= self._next_sync:
            # Rumours did not bring the two views together: exchange every decision
            # (at most once per sync interval: while the cluster changes, they differ).
            self._next_sync = trio.current_time() + self._sync_interval
            reply = await self._send(peer, self._hello(peer, full=True, sync=True))
            self._answered(peer, reply)
        return reply

    async def _send(self, peer: str, hello: dict[str, Any]) -> Any:
        self.sent += 1
        return await self._peers.post(peer, "/cluster/heartbeat", hello)

    async def _check_majority(self) -> None:
        """With keep-majority: stop activating, and give up this node's actors, when it
        reaches only a minority of the cluster; go on when it reaches a majority again."""
        if not self._keep_majority:
            return
        now = self.membership.majority()
        if now == self._in_majority:
            return
        self._in_majority = now
        view = self.membership.view()
        if now:
            logger.warning(
                "reaches a majority of the cluster again (%d nodes): activating", len(view)
            )
            return
        reached = len(self.membership.placement())
        ids = self._catalog.ids()
        logger.warning(
            "reaches %d of the cluster's %d nodes, not a majority: activating nothing, and"
            " giving up its %d actors to the majority (partition=keep-majority)",
            reached,
            len(view),
            len(ids),
        )
        for actor_id in ids:
            activation = self._catalog.get(actor_id)
            if activation is not None:
                activation.request_deactivation(DeactivationReason.PARTITION)

    def _taken_out(self, peer: str, why: str) -> None:
        """``peer`` has just left placement for not answering."""
        logger.warning("%s %s: out of placement", peer, why)
        # Calls on their way to it (a hung process, a lost host) would wait for their
        # deadlines: they fail now, as interrupted (they may have run).
        self._peers.interrupt(peer)
        self._bloom_due.set()

    def _answered(self, peer: str, reply: Any) -> str:
        """Take in a peer's answer to a heartbeat; returns the name it goes by. An
        address that turns out to be an alias (``localhost:8080`` for
        ``127.0.0.1:8080``) is taken out: one node must have one name, or placement
        would count it twice and send calls round in circles."""
        name = wire.hello_name(peer, reply)
        self._key_refusals.cleared(peer)
        if name != peer and self.membership.state(peer) in (MemberState.ALIVE, MemberState.DOWN):
            self.membership.remove(peer)  # a tombstone, so that no peer gossips it back
        self._take(reply)
        self._note_downs(name, reply)
        self._heard_bloom(name, reply)
        if self.membership.heard_from(name):
            logger.info("%s answers: in placement", name)
            self._back(name)
        return name

    def _take(self, message: Any) -> None:
        """Take in the decisions and rumours of a heartbeat or an answer, and act on
        what they changed."""
        gossip = [item for item in wire.hello_gossip(message) if isinstance(item, dict)]
        records = [item for item in gossip if "live" not in item]
        if wire.hello_str(message, "digest") != self.membership.digest():  # else known
            records += wire.hello_records(message)
        merged = self._merge(records) if records else False
        liveness = [item for item in gossip if "live" in item]
        self._react(self.membership.take_in(liveness), merged)
        if any(item["live"] == "suspect" for item in liveness):
            self._suspected.set()

    def _react(self, heard: Heard, merged: bool) -> None:
        """Act on what a message changed: settle a change of decisions, log and act on
        peers in and out of placement, look for duplicates if this node was taken for
        down."""
        if heard.decisions or merged:
            self._settle_soon()
        for peer in heard.up:
            logger.info("%s is alive again (heard by gossip): in placement", peer)
            self._back(peer)
        for peer in heard.down:
            self._taken_out(peer, "is down (heard by gossip)")
        if heard.taken_for_down:
            logger.warning(
                "a peer took this node for down meanwhile: looking for its actors activated"
                " elsewhere"
            )
            self._duplicates_due = Duplicates.ALL
            self._bloom_due.set()

    def _back(self, peer: str) -> None:
        """``peer`` is back in placement: the ids it owns move back to it, and it may
        hold some of this node's (activated while each took the other for down), so
        settle: fetch its filter fresh before activating again."""
        self._returned.add(peer)
        self._settle_soon()

    def _heard_bloom(self, peer: str, hello: Any) -> None:
        version = wire.hello_int(hello, "bloom")
        if version is not None:
            self.directory.heard_version(peer, version, wire.hello_int(hello, "actors"))

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

    def _hello(
        self,
        peer: str | None = None,
        *,
        full: bool = False,
        own: bool = False,
        sync: bool = False,
        probe: str | None = None,
    ) -> dict[str, Any]:
        """A heartbeat, to ``peer`` (or the answer to one): this node's name, digest,
        rumours (what it believes of ``peer``, if that is not that it is alive, among
        them), and how many times it took ``peer`` for down; every decision if
        ``full``, its own if ``own``; ``sync``: asking for every decision back if they
        differ; ``probe``: the peer to probe on this node's behalf."""
        membership = self.membership
        gossip = membership.gossip(_GOSSIP_PER_MESSAGE)
        if full:
            gossip += membership.liveness()
        downs = None
        if peer is not None:
            downs = membership.downs(peer)
            about = membership.rumour_about(peer)
            if about is not None:
                gossip.append(about)
        return wire.hello(
            self.me,
            digest=membership.digest(),
            gossip=gossip,
            incarnation=membership.incarnation,
            bloom=self.directory.bloom.version,
            actors=self.directory.bloom.count,
            records=membership.records() if full else [membership.record()] if own else None,
            downs=downs,
            sync=sync,
            probe=probe,
        )


def _state(membership: Membership, address: str) -> str:
    state = membership.state(address)
    return state.value if state is not None else "unknown"
