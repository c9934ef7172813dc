"""The answering end of a lane (see :mod:`towtruck.transport.lanes` for the calling
end): calls read off the connection, run concurrently, answered as they are ready."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import outcome
import trio

from .. import codec
from ..cluster import wire
from ..errors import ResultTooLarge, TowtruckError
from ..runtime import MAX_ANSWER
from . import sockets
from .writer import FrameWriter

__all__ = ["Answerer", "serve_lane"]

logger = logging.getLogger("towtruck.cluster")

_READ_SIZE: Final = 256 * 1024
#: Tasks a lane keeps waiting for calls once they have answered one.
_SPARE_TASKS: Final = 64


def _too_large(size: int) -> tuple[int, bytes]:
    error = ResultTooLarge(f"an answer of {size} bytes is over {MAX_ANSWER}", size=size)
    return error.status, codec.error_body(error)


class Answerer(Protocol):
    """What answers a lane's calls (:class:`towtruck.server.forwarded.ForwardedCalls`)."""

    async def answer(self, call: wire.Call) -> tuple[int, bytes]:
        """Run ``call``: the HTTP status and the answer's body, as ``POST
        /cluster/forward`` would answer (errors as JSON; raises nothing else)."""
        ...

    def refuse(self, error: TowtruckError) -> tuple[int, bytes]:
        """The status and body that answer with ``error``."""
        ...

    def answers_at_once(self, call: wire.Call) -> bool:
        """Whether ``call`` will be answered without waiting for anything."""
        ...


async def serve_lane(
    stream: trio.SocketStream,
    initial: bytes,
    calls: Answerer,
    stopping: Callable[[], Awaitable[object]],
) -> None:
    """The answering end of a lane: run each call as it arrives (concurrently), send
    each answer as it is ready, until the caller closes the lane or ``stopping()``
    returns (the server is shutting down: the calls already read are answered, then
    the lane closes).

    Each envelope is decoded once, here: one that is not a call's is refused with
    ``calls.refuse``. If the caller closes the lane, the calls still running are
    abandoned (cancelled where they wait; turns already running finish). A call
    ``calls.answers_at_once`` (its actor is idle, its method cannot suspend) is
    answered by the reader itself: handing it to another task cost a tenth of a
    forwarded call. (If it waits after all, the calls behind it on the lane wait too,
    no longer.)
    """
    writer = FrameWriter(stream)
    running = 0
    idle = trio.Event()
    # Tasks that answered a call and wait for another. Handing a call to one of them
    # costs a reschedule; spawning a task for every call cost about twice that.
    spare: list[trio.lowlevel.Task] = []

    async def answer_one(
        number: int, call: wire.Call, send: Callable[[bytes], None] = writer.send
    ) -> None:
        nonlocal running, idle
        try:
            status, body = await calls.answer(call)
            if len(body) > MAX_ANSWER:  # the runtime refuses them first
                status, body = _too_large(len(body))
            send(wire.answer_frame(number, status, body))
        finally:
            running -= 1
            if not running:
                idle.set()
                idle = trio.Event()

    async def take_calls(number: int, call: wire.Call) -> None:
        task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            spare.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            await answer_one(number, call)
            if len(spare) >= _SPARE_TASKS:
                return
            spare.append(task)
            number, call = await trio.lowlevel.wait_task_rescheduled(abort)

    async def read(nursery: trio.Nursery) -> None:
        nonlocal running
        buffer, chunk = bytearray(initial), b""
        while True:
            # What the reader answers itself goes out in one write once it has read
            # all it can (writer.flush), without waking the lane's writer (if the
            # reader is stopped before, with the writer's next write, or at drain).
            for number, kind, body in wire.split(buffer):
                if kind == wire.CALL:
                    try:
                        call = wire.decode_call(body)
                    except TowtruckError as exc:
                        writer.hold(wire.answer_frame(number, *calls.refuse(exc)))
                        continue
                    running += 1  # counted now: shutdown waits for calls read, not started
                    if calls.answers_at_once(call):
                        await answer_one(number, call, writer.hold)
                    elif spare:
                        trio.lowlevel.reschedule(spare.pop(), outcome.Value((number, call)))
                    else:
                        nursery.start_soon(take_calls, number, call)
                elif kind == wire.PROBE:
                    writer.hold(wire.frame(number, wire.PROBED, b""))
            writer.flush()
            chunk = await sockets.receive(stream, _READ_SIZE, drained=len(chunk) < _READ_SIZE)
            if not chunk:
                nursery.cancel_scope.cancel()  # the caller closed the lane
                return
            buffer += chunk

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            async with trio.open_nursery() as reading:
                reading.start_soon(read, nursery)
                await stopping()
                reading.cancel_scope.cancel()
            while running:  # answer the calls already read, then close
                await idle.wait()
            await writer.drain()
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the caller went away: nobody to answer
    except* wire.BadFrame as group:
        logger.warning("closing a lane: the peer sent %s", group.exceptions[0])
    except* Exception as group:  # a bug; whatever the peer sent, the node lives on
        logger.error("closing a lane after an unexpected error", exc_info=group.exceptions[0])
