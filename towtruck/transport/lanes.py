"""Lanes: one persistent connection between two nodes carrying many calls at once.

Forwarding a call as its own HTTP request caps a node at about a thousand forwards a
second, mostly in the HTTP client; a websocket through Hypercorn and Quart-Trio carries
ten times that. A lane does better still by doing less: the node opens a connection to
a peer's HTTP port, asks to upgrade it (``GET /cluster/lane``, ``Upgrade:
towtruck-lane``), and from the ``101`` on both ends exchange length-prefixed frames
(calls, answers, probes and their replies: :mod:`towtruck.cluster.wire` has their
format and encodes and decodes them; this module only moves them).

Calls are numbered by the caller; answers come back in any order, matched by number.
Each side has one task that reads and one that writes; the frames queued in one round
of the scheduler, or while a write is under way, go out together in the next write, so
under load many calls share a system call (:mod:`towtruck.transport.writer`). The
answering side answers a call that cannot wait in its reader, and runs any other in a
task of its own, kept after the answer for the next call. Websocket framing (masking every client frame, in Python) would buy nothing
between two towtruck nodes. A peer that refuses the upgrade (a node served by stock
Hypercorn, say) gets its calls as HTTP requests instead (:mod:`towtruck.transport.peers`).

A lane that breaks fails the calls waiting on it with :class:`CallInterrupted` (they
were sent, so they may have run); the next call opens a new one.

A peer can fail without breaking the lane: it may accept the connection and never
answer the upgrade, or answer heartbeats and swallow calls. So opening a lane has a
deadline of its own (and the failure detector can cut it short:
:meth:`Lanes.interrupt`), and a lane with calls waiting that has received nothing
for a while is probed; one that answers neither calls nor the probe is *stalled*
(:meth:`Lanes.stalled`), which the router treats like missed heartbeats. A turn that
runs long is not a stall: the probe's reply comes from the peer's reader, whatever its
actors are doing.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Final

import outcome
import trio

from .. import codec
from ..cluster import wire
from ..errors import (
    CallInterrupted,
    CallTimeout,
    InternalError,
    InvalidJSON,
    PayloadTooLarge,
    PeerUnavailable,
    from_payload,
)
from . import sockets
from .writer import FrameWriter

__all__ = ["Lanes", "open_lanes"]

logger = logging.getLogger("towtruck.cluster")

_READ_SIZE: Final = 256 * 1024
# How often a lane looks for calls past their deadlines (see _Lane._expire).
_EXPIRY_TICK: Final = 0.5


class _Lane:
    """The caller's end of one lane."""

    def __init__(self, peer: str, stream: trio.SocketStream) -> None:
        self.peer = peer
        self.broken = False
        self._stream = stream
        self._writer = FrameWriter(stream)
        self._numbers = itertools.count()
        # The calls waiting for answers: each one's task (parked) and deadline.
        self._waiting: dict[int, tuple[trio.lowlevel.Task, float]] = {}
        #: When the last bytes came in from the peer, on trio's clock.
        self.received_at = trio.current_time()
        # When :meth:`stalled` first saw calls waiting (None: it saw none).
        self._busy_seen: float | None = None
        # When :meth:`stalled` last probed the peer (None: not since it was busy).
        self._probed_at: float | None = None

    def stalled(self, after: float) -> bool:
        """Whether calls have been waiting for ``after`` seconds with nothing received
        from the peer, not even the reply to a probe sent at least ``after / 2`` ago.
        Probes the peer once it has been quiet for half of ``after``. Seen from one call
        to the next (the heartbeat's), so a stall shows within ``after`` plus twice the
        time between two calls; however the calls fall, the probe has half of
        ``after`` to be answered (a busy peer's reader answers it between two reads).
        Not a checkpoint."""
        now = trio.current_time()
        if not self._waiting:
            self._busy_seen = self._probed_at = None
            return False
        if self._busy_seen is None:
            self._busy_seen = now
        since = max(self.received_at, self._busy_seen)
        if now - since < after / 2:
            return False
        if self._probed_at is None or self._probed_at < since:  # nothing asked since news
            self._probed_at = now
            self._writer.send(wire.frame(0, wire.PROBE, b""))
            return False
        return now - since > after and now - self._probed_at >= after / 2

    async def call(self, envelope: bytes, deadline: float) -> bytes:
        """Send a call and wait for its answer (see :meth:`Lanes.call`). A checkpoint;
        if cancelled, the call is abandoned here (its answer is dropped when it comes)."""
        if self.broken:
            raise PeerUnavailable(f"the lane to {self.peer} is closed", peer=self.peer)
        if len(envelope) > wire.MAX_FRAME:
            raise PayloadTooLarge(f"a call of {len(envelope)} bytes is over {wire.MAX_FRAME}")
        number = next(self._numbers)
        call = wire.frame(number, wire.CALL, envelope)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiting.pop(number, None)
            return trio.lowlevel.Abort.SUCCEEDED

        # The task parks itself, as trio's channels do: its answer (or error) is sent
        # straight into it by _settle, with no slot in between.
        self._waiting[number] = (trio.lowlevel.current_task(), deadline)
        self._writer.send(call)
        answer: bytes = await trio.lowlevel.wait_task_rescheduled(abort)
        return answer

    async def _expire(self) -> None:
        """Fail the calls still waiting past their deadlines, every ``_EXPIRY_TICK``.

        The peer ends each call at its deadline (the deadline travels in the envelope)
        and answers so, so this only catches a peer that takes calls and answers
        neither them nor in time. One sweep per lane, rather than a cancel scope around
        each call's wait: a cancel scope was an eighth of a forwarded call's cost.
        """
        while True:
            await trio.sleep(_EXPIRY_TICK)
            now = trio.current_time()
            for number, (_, due) in list(self._waiting.items()):
                if now >= due:
                    error = CallTimeout(
                        f"no answer from {self.peer} by the call's deadline", node=self.peer
                    )
                    self._settle(number, outcome.Error(error))

    async def run(self, initial: bytes) -> None:
        """Read answers until the lane breaks; then fail the calls still waiting."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer.run)
                nursery.start_soon(self._expire)
                buffer, chunk = bytearray(initial), b""
                while True:
                    self._dispatch(wire.split(buffer))
                    chunk = await sockets.receive(
                        self._stream, _READ_SIZE, drained=len(chunk) < _READ_SIZE
                    )
                    if not chunk:
                        break
                    self.received_at = trio.current_time()
                    buffer += chunk
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, wire.BadFrame) as group:
            logger.info("lane to %s broke: %r", self.peer, group.exceptions[0])
        except* Exception as group:  # a bug; whatever the peer sent, the node lives on
            logger.error("closing the lane to %s", self.peer, exc_info=group.exceptions[0])
        finally:
            self.broken = True
            # They were sent, or about to be: they may have run. One error each: an
            # exception raised in several tasks would chain their tracebacks.
            for number in list(self._waiting):
                error = CallInterrupted(f"the lane to {self.peer} closed", peer=self.peer)
                self._settle(number, outcome.Error(error))
            self._stream.socket.close()

    def _dispatch(self, frames: list[tuple[int, bytes, bytes]]) -> None:
        for number, kind, body in frames:
            if kind != wire.ANSWER:
                continue  # a probe's reply (its arrival was the point), or unknown
            waiting = self._waiting.pop(number, None)
            if waiting is None:
                continue  # its caller gave up
            task = waiting[0]
            answer = wire.decode_answer(body)
            if answer is None:
                error = InternalError(f"{self.peer} sent a broken answer")
                trio.lowlevel.reschedule(task, outcome.Error(error))
                continue
            status, body = answer
            if status == 200:
                trio.lowlevel.reschedule(task, outcome.Value(body))
            else:
                try:
                    payload = codec.loads(body)
                except InvalidJSON:
                    payload = None
                trio.lowlevel.reschedule(task, outcome.Error(from_payload(payload, status)))

    def _settle(self, number: int, result: outcome.Outcome[bytes]) -> None:
        """Wake call ``number``'s task with ``result``, if it still waits."""
        waiting = self._waiting.pop(number, None)
        if waiting is not None:
            trio.lowlevel.reschedule(waiting[0], result)


class Lanes:
    """This node's lanes to its peers, opened on first use. See :func:`open_lanes`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        headers: dict[str, str],
        open_timeout: Callable[[], float],
        paths: Mapping[str, str],
        retry_after: float,
    ) -> None:
        self._nursery = nursery
        self._headers = headers
        self._open_timeout = open_timeout
        self._retry_after = retry_after
        self._paths = paths
        self._lanes: dict[str, _Lane] = {}
        # Lanes being opened: set when done; cancelled to give up on the peer.
        self._opening: dict[str, tuple[trio.Event, trio.CancelScope]] = {}
        #: Peers that refused a lane, and when: their calls go as HTTP requests for a
        #: while (a node served by stock Hypercorn, say), then they are asked again.
        self.refused: dict[str, float] = {}

    def ready(self, peer: str) -> _Lane | None:
        """The lane to ``peer`` if one is open: :meth:`call` on it, then, is
        :meth:`Lanes.call` with nothing to open. Not a checkpoint."""
        lane = self._lanes.get(peer)
        return None if lane is None or lane.broken else lane

    async def call(self, peer: str, envelope: bytes, deadline: float) -> bytes | None:
        """Send a call's envelope to ``peer`` and return the answer (its result as
        JSON), or None if the peer takes no lanes. Bounded by the caller's scope and by
        ``deadline`` (on trio's clock; the peer ends the call then itself, and this
        side gives up on it soon after: see :meth:`_Lane._expire`).

        Raises:
            CallTimeout: no answer soon after ``deadline``.
            PeerUnavailable: no connection could be made (``delivered=False``), the
                peer did not open a lane within ``open_timeout()`` or was given up on
                meanwhile (:meth:`interrupt`), or the lane broke while the call waited.
            TowtruckError: the error the peer answered with.
        """
        lane = self._lanes.get(peer)
        if lane is None or lane.broken:
            if self._refuses(peer):
                return None
            lane = await self._open(peer)
            if lane is None:
                return None
        return await lane.call(envelope, deadline)

    def close(self, keep: set[str]) -> None:
        """Close the lanes to peers not in ``keep`` (gone from the cluster)."""
        for peer in set(self._lanes) - keep:
            self.interrupt(peer)
        for peer in set(self.refused) - keep:
            del self.refused[peer]

    def interrupt(self, peer: str) -> None:
        """Close the lane to ``peer`` if there is one, or stop opening it (the next
        call opens another). Its calls fail: see :meth:`call`."""
        lane = self._lanes.pop(peer, None)
        if lane is not None:
            lane._stream.socket.close()
        opening = self._opening.get(peer)
        if opening is not None:
            opening[1].cancel()

    def stalled(self, peer: str, after: float) -> bool:
        """Whether the lane to ``peer`` has had calls waiting for ``after`` seconds
        and received nothing meanwhile (see :meth:`_Lane.stalled`; it probes the peer
        when quiet). Not a checkpoint."""
        lane = self._lanes.get(peer)
        return lane is not None and not lane.broken and lane.stalled(after)

    def _refuses(self, peer: str) -> bool:
        since = self.refused.get(peer)
        if since is not None and trio.current_time() - since > self._retry_after:
            del self.refused[peer]
            return False
        return since is not None

    async def _open(self, peer: str) -> _Lane | None:
        while (pending := self._opening.get(peer)) is not None:
            await pending[0].wait()  # another call is opening it: use that lane
            lane = self._lanes.get(peer)
            if lane is not None and not lane.broken:
                return lane
            if self._refuses(peer):
                return None
        timeout = self._open_timeout()
        opening = (trio.Event(), trio.CancelScope(deadline=trio.current_time() + timeout))
        self._opening[peer] = opening
        try:
            host, _, port = peer.rpartition(":")
            path = self._paths.get(peer)
            initial: bytes | None = None
            with opening[1]:
                try:
                    if path is not None:  # a worker of this host: see open_lanes
                        abstract = "\0" + path[1:] if path.startswith("@") else path
                        stream = await trio.open_unix_socket(abstract)
                    else:
                        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                except OSError as exc:
                    raise PeerUnavailable(
                        f"could not connect to {peer}: {exc}", peer=peer, delivered=False
                    ) from exc
                try:
                    initial = await _upgrade(stream, peer, self._headers)
                except BaseException:
                    stream.socket.close()
                    raise
            if opening[1].cancelled_caught:
                given_up = trio.current_time() < opening[1].deadline
                reason = "it stopped answering" if given_up else f"{timeout:.3g} s"
                raise PeerUnavailable(f"{peer} opened no lane: {reason}", peer=peer)
            if initial is None:
                self.refused[peer] = trio.current_time()
                await stream.aclose()
                return None
            lane = self._lanes[peer] = _Lane(peer, stream)
            self._nursery.start_soon(lane.run, initial)
            return lane
        finally:
            opening[0].set()
            if self._opening.get(peer) is opening:
                del self._opening[peer]


async def _upgrade(stream: trio.SocketStream, peer: str, headers: dict[str, str]) -> bytes | None:
    """Ask ``peer`` for a lane; returns the bytes read past its ``101`` answer, or None
    if it answered anything else."""
    lines = [
        b"GET " + wire.LANE_PATH + b" HTTP/1.1",
        b"host: " + peer.encode(),
        b"connection: upgrade",
        b"upgrade: " + wire.UPGRADE,
        *(f"{name}: {value}".encode() for name, value in headers.items()),
    ]
    try:
        await stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = await stream.receive_some(_READ_SIZE)
            if not chunk:  # closed before answering (restarting?): not a refusal
                raise trio.BrokenResourceError("closed before it answered")
            if len(received) > 65536:
                return None
            received += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise PeerUnavailable(f"{peer} closed the connection: {exc}", peer=peer) from exc
    head, _, rest = received.partition(b"\r\n\r\n")
    return rest if head.startswith(b"HTTP/1.1 101") else None


@asynccontextmanager
async def open_lanes(
    headers: dict[str, str] | None = None,
    *,
    open_timeout: Callable[[], float] = lambda: 5.0,
    paths: Mapping[str, str] | None = None,
    retry_after: float = 60.0,
) -> AsyncIterator[Lanes]:
    """Lanes to peers for the duration of the block; leaving it closes them all.

    Args:
        headers: Sent with every upgrade request (the cluster's credentials).
        open_timeout: Says how long a peer may take to accept a lane (connect and
            upgrade), when one is opened.
        paths: Unix domain sockets that peers of this host (``--workers``) listen on
            too, by peer address (``@name``: in Linux's abstract namespace): their
            lanes go there instead of over TCP loopback, which costs the kernel less
            per message.
        retry_after: How long a peer that refused a lane gets its calls as HTTP
            requests before it is asked for a lane again.
    """
    async with trio.open_nursery() as nursery:
        yield Lanes(nursery, headers or {}, open_timeout, paths or {}, retry_after)
        nursery.cancel_scope.cancel()
