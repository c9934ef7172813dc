"""The network of a simulated cluster: every message between nodes goes through one
:class:`SimulatedNetwork`, which delays, drops, duplicates and partitions them as it is
told, drawing every chance from one seeded random source, so that a run replays exactly.

What it models, and how a real network shows the same thing:

- **latency**: each way of each message takes a time drawn from ``latency`` (seconds,
  low and high), plus the extra time of a ``slow`` node;
- **loss**: the cluster's own messages (heartbeats, filters, queries) are lost with
  probability ``loss`` each way, and the sender waits for its deadline; a forwarded
  call travels on a lane (TCP), so a loss there is a retransmission: it arrives
  ``RETRANSMIT`` seconds late;
- **duplicates**: a cluster message is delivered twice with probability
  ``duplicate`` (the second answer is dropped);
- **partitions**: messages between nodes of different groups are lost, whatever
  their kind (a cable cut, a firewall);
- **killed** nodes refuse connections (a process gone; its host answers with a
  reset), **hung** ones swallow everything they are sent and send nothing (a frozen
  process, a host gone).

Messages go through JSON as they would on the wire; their sizes are counted per
sender (:attr:`SimulatedNetwork.sent`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import trio

from .. import codec
from ..cluster import wire
from ..errors import CallTimeout, PeerUnavailable, TowtruckError, from_payload

if TYPE_CHECKING:
    from .simulation import SimulatedNode

__all__ = ["RETRANSMIT", "SimulatedNetwork", "SimulatedPeers"]

#: How late a lost packet of a forwarded call arrives (TCP's first retransmission).
RETRANSMIT: Final = 0.2


class SimulatedNetwork:
    """Who can reach whom, and how well.

    Args:
        seed: Every chance the network draws comes from ``random.Random(seed)``.
        latency: One way of a message takes between these many seconds.
        loss: Probability that one way of a cluster message is lost.
        duplicate: Probability that a cluster message is delivered twice.
    """

    def __init__(
        self,
        seed: int | str = 0,
        *,
        latency: tuple[float, float] = (0.0005, 0.002),
        loss: float = 0.0,
        duplicate: float = 0.0,
    ) -> None:
        self.random = random.Random(seed)
        self.latency = latency
        self.loss = loss
        self.duplicate = duplicate
        #: The nodes serving, by address.
        self.nodes: dict[str, SimulatedNode] = {}
        #: Extra seconds each way for messages to or from these nodes.
        self.slow: dict[str, float] = {}
        self.hung: set[str] = set()
        #: Per node: messages and bytes it sent (requests and answers).
        self.sent: Counter[str] = Counter()
        self.sent_bytes: Counter[str] = Counter()
        self._group: dict[str, int] = {}

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network into ``groups`` of addresses: messages between groups are
        lost. Addresses in no group form one more group together."""
        self._group = {address: number for number, group in enumerate(groups) for address in group}

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self._group = {}

    def connected(self, a: str, b: str) -> bool:
        """Whether a message between ``a`` and ``b`` can get through."""
        return (
            a not in self.hung
            and b not in self.hung
            and self._group.get(a, -1) == self._group.get(b, -1)
        )

    async def carry(self, sender: str, receiver: str, payload: Any, *, lossy: bool) -> Any:
        """One way of a message: wait its latency, lose it (sleep until the sender's
        deadline) if the network says so, and return it as the other end reads it."""
        data = payload if isinstance(payload, bytes) else codec.dumps(payload)
        self.sent[sender] += 1
        self.sent_bytes[sender] += len(data)
        low, high = self.latency
        delay = (
            self.random.uniform(low, high) + self.slow.get(sender, 0) + self.slow.get(receiver, 0)
        )
        lost = self.loss and self.random.random() < self.loss
        if lost and not lossy:
            delay += RETRANSMIT
        await trio.sleep(delay)
        if (lost and lossy) or not self.connected(sender, receiver):
            await trio.sleep_forever()
        return data if isinstance(payload, bytes) else orjson.loads(data)

    def reach(self, sender: str, receiver: str) -> SimulatedNode:
        """The node at ``receiver``, or :class:`PeerUnavailable` (refused) if none serves
        there. Not a checkpoint."""
        node = self.nodes.get(receiver)
        if node is None:
            raise PeerUnavailable(
                f"{receiver} refused a connection", peer=receiver, delivered=False
            )
        return node


class SimulatedPeers:
    """A simulated node's :class:`~towtruck.cluster.directory.PeerClient`: its messages
    go through a :class:`SimulatedNetwork` to the other nodes' own handlers."""

    def __init__(self, network: SimulatedNetwork, me: str) -> None:
        self._network = network
        self._me = me

    async def forward(self, peer: str, envelope: bytes, deadline: float) -> bytes:
        with trio.move_on_at(deadline):
            body: bytes = await self._request(peer, envelope, self._answer_call, lossy=False)
            return body
        raise CallTimeout(f"no answer from {peer} within the call's deadline", node=peer)

    async def post(self, peer: str, path: str, payload: Any) -> Any:
        if path != "/cluster/heartbeat":
            raise PeerUnavailable(f"{peer} has no route {path}", peer=peer)
        return await self._request(peer, payload, _answer_heartbeat, lossy=True)

    async def get(self, peer: str, path: str) -> Any:
        return await self._request(peer, path, _answer_get, lossy=True)

    def prune(self, keep: set[str]) -> None:
        pass

    def interrupt(self, peer: str) -> None:
        pass

    def stalled(self, peer: str, after: float) -> bool:
        return False

    async def _request(self, peer: str, payload: Any, answer: Any, *, lossy: bool) -> Any:
        network = self._network
        await trio.lowlevel.checkpoint()
        network.reach(self._me, peer)  # a refused connection costs no time on loopback
        request = await network.carry(self._me, peer, payload, lossy=lossy)
        node = network.reach(self._me, peer)
        if lossy and network.duplicate and network.random.random() < network.duplicate:
            with trio.move_on_after(1.0):  # the copy's answer goes nowhere
                await answer(node, request)
        try:
            reply, error = await answer(node, request), None
        except TowtruckError as exc:  # it crosses the wire as JSON, and is rebuilt
            reply, error = orjson.loads(codec.error_body(exc)), exc.status
        reply = await network.carry(peer, self._me, reply, lossy=lossy)
        if error is not None:
            raise from_payload(orjson.loads(reply) if isinstance(reply, bytes) else reply, error)
        return reply

    @staticmethod
    async def _answer_call(node: SimulatedNode, envelope: bytes) -> bytes:
        return await node.forwarded.run(wire.decode_call(envelope))


async def _answer_heartbeat(node: SimulatedNode, hello: Any) -> Any:
    return await node.routes.heartbeat(hello)


async def _answer_get(node: SimulatedNode, path: str) -> Any:
    await trio.lowlevel.checkpoint()
    url = urlsplit(path)
    if url.path.startswith("/query/"):
        return node.routes.query(unquote(url.path.removeprefix("/query/")))
    if url.path != "/getbloom":
        raise PeerUnavailable(f"{node.address} has no route {url.path}", peer=node.address)
    query = parse_qs(url.query)
    since = query.get("since", [None])[0]
    return node.routes.getbloom(since, fresh="fresh" in query)
