"""The call path of a clustered node: where each call runs.

Where a call runs, in order:

1. If the actor is active on this node, here, whatever placement says: an actor stays
   where it was activated until it is collected, so its in-memory state is never
   thrown away when the membership changes.
2. Otherwise placement names the owner. If it is another node, the call is forwarded
   there (once; a hop limit stops a loop while two nodes' views disagree).
3. If this node owns the id, it first looks for an existing activation elsewhere
   (:meth:`Directory.locate <towtruck.cluster.directory.Directory.locate>`: the peers'
   bloom filters, then ``/query``) and forwards the call there if there is one; if
   not, it activates the actor here.

Single activation rests on two rules. Every node that receives a call for an actor
it does not hold sends it to the owner, so concurrent first calls meet in one actor
table, where finding and creating an activation is atomic. And after any change of
membership a node settles (:mod:`towtruck.cluster.gossip`) before it activates ids
it owns again; calls that would activate an actor wait for that, a round trip or
two; calls to actors already active anywhere do not.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import trio

from ..calls import CallContext
from ..catalog import Catalog
from ..errors import ForwardingLoop, MinorityPartition, NotActive, PeerUnavailable
from ..tracing import to_traceparent
from . import wire
from .directory import Directory, PeerClient
from .gossip import Gossip
from .membership import Membership

__all__ = ["MAX_HOPS", "Router"]

logger = logging.getLogger("towtruck.cluster")

#: Times a call may be forwarded between nodes before it fails with 508.
MAX_HOPS: Final = 4


class Router:
    """Where each call of a clustered node runs (see the module's docstring).

    Args:
        me: The ``host:port`` peers reach this node at.
        catalog: This node's actor table.
        membership: Who the peers are (placement).
        directory: Where actors already active are.
        gossip: The membership protocol: whether the view is settled.
        peers: The client to forward calls with.
    """

    def __init__(
        self,
        me: str,
        catalog: Catalog,
        membership: Membership,
        directory: Directory,
        gossip: Gossip,
        peers: PeerClient,
    ) -> None:
        self.me = me
        self.membership = membership
        self.directory = directory
        self.gossip = gossip
        self._catalog = catalog
        self._peers = peers
        #: Calls this node sent on to another.
        self.forwarded = 0

    @property
    def peer_client(self) -> PeerClient:
        """The client this node reaches its peers with (the cluster key included)."""
        return self._peers

    async def invoke(self, actor_id: str, method: str, data: Any, context: CallContext) -> bytes:
        """Run a call where its actor lives (see the module's docstring). A checkpoint."""
        if self.membership.alone:  # nowhere else to look: the shortest way
            return await self._catalog.invoke(actor_id, method, data, context)
        if actor_id in self._catalog:
            try:
                return await self._catalog.invoke(actor_id, method, data, context, create=False)
            except NotActive:
                pass  # collected while the call waited: place it afresh
        owner = self.membership.owner(actor_id)
        if owner != self.me:
            if context.hops and not self.gossip.settled:
                # A peer sent it here by its view, and this node's view is changing:
                # sending it on now could bounce it between two views (until 508).
                # Settling brings the views together; then place it again.
                await self.gossip.wait_settled(context.deadline)
                return await self.invoke(actor_id, method, data, context)
            return await self._forward(owner, actor_id, method, data, context, existing=False)
        if not self.gossip.settled:
            await self.gossip.wait_settled(context.deadline)
            return await self.invoke(actor_id, method, data, context)  # the view moved
        try:
            holder = await self.directory.locate(actor_id, context.deadline)
        except PeerUnavailable:  # an unreachable node may hold it: activating must wait
            if self.gossip.activating:
                raise
            holder = None  # this node would not activate it anyway: say why, below
        if holder is not None:
            try:
                return await self._forward(holder, actor_id, method, data, context, existing=True)
            except NotActive:
                self.directory.forget(actor_id)
        if self.membership.owner(actor_id) != self.me or not self.gossip.settled:
            return await self.invoke(actor_id, method, data, context)  # moved meanwhile
        if not self.gossip.activating:  # an activation it can reach still serves, above
            raise MinorityPartition(
                f"actor {actor_id!r} is active nowhere this node can reach, and it reaches"
                f" only {len(self.membership.placement())} of the cluster's"
                f" {len(self.membership.view())} nodes: it activates nothing until it"
                " reaches a majority again (partition=keep-majority)",
                actor=actor_id,
                node=self.me,
            )
        return await self._catalog.invoke(actor_id, method, data, context)

    async def _forward(
        self,
        peer: str,
        actor_id: str,
        method: str,
        data: Any,
        context: CallContext,
        *,
        existing: bool,
    ) -> bytes:
        if context.hops >= MAX_HOPS:
            raise ForwardingLoop(
                f"the call to {method!r} on actor {actor_id!r} was forwarded {context.hops}"
                " times: the nodes disagree about who owns it (membership is changing)",
                actor=actor_id,
                node=self.me,
            )
        envelope = wire.encode_call(
            actor_id,
            method,
            data,
            context.chain,
            context.deadline - trio.current_time(),
            context.hops + 1,
            existing=existing,
            hook=context.hook,
            traceparent=None if context.trace is None else to_traceparent(context.trace),
        )
        self.forwarded += 1
        try:
            return await self._peers.forward(peer, envelope, context.deadline)
        except PeerUnavailable as exc:
            # Only this node's own failure to reach the peer counts against it: an error
            # the peer relayed (``remote``) is about that peer's own peers.
            if not exc.remote and exc.details.get("delivered") is False:
                self.gossip.refused(peer)
            raise
