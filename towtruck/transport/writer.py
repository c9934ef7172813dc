"""The writing half of a lane, on either end: frames queued by any task, sent by one."""

from __future__ import annotations

import trio

from . import sockets

__all__ = ["FrameWriter"]


# When a frame goes out. Senders only queue it and wake the writer, which runs in the
# scheduler's next round: every frame queued in this round (calls from many requests,
# answers to all the calls one read brought) goes out in that one system call, and
# those queued while a write waits for room go out together in the next. A quiet
# lane's frame waits for nothing but the end of the round: no timer, no Nagle. What
# lost: writing at once from the sender when the lane looked quiet (one call waiting,
# one answer running) saved the writer's wake-up at one call at a time, but under load
# sent about a frame per system call, and woke the peer's reader as often.
class FrameWriter:
    """Sends queued frames, as many per write as have queued meanwhile. Senders only
    queue (no checkpoint, nothing to cancel), so a sender leaves at its deadline even
    when the peer is slow to read; one task per lane writes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._queued: list[bytes] = []
        # The writer while it waits for frames, so that a sender can wake it.
        self._parked: trio.lowlevel.Task | None = None
        self._writing = False
        self._wrote: trio.Event | None = None  # set after a write, for drain()

    def send(self, frame: bytes) -> None:
        """Queue a frame; it goes out once the tasks running now have had their turn.
        Not a checkpoint."""
        self._queued.append(frame)
        self._wake()

    def hold(self, frame: bytes) -> None:
        """Queue a frame without waking the writer: it goes out at the next
        :meth:`flush`, or with the next write. Not a checkpoint."""
        self._queued.append(frame)

    def flush(self) -> None:
        """Write what is queued now, from this task, unless a write is under way (then
        it goes out next); what the socket does not take is left to the writer. For a
        task that has just queued a batch of its own (a lane's reader, its answers to
        one read): that saves waking the writer. Not a checkpoint."""
        if not self._queued or self._writing:
            return
        frames, self._queued = self._queued, []
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        sent = sockets.send_now(self._stream, data)
        if sent < len(data):
            self.send(data[sent:])
        else:
            self._wrote_all()

    async def run(self) -> None:
        """Write what is queued, as it comes, until cancelled.

        Raises:
            trio.BrokenResourceError: the lane broke.
        """
        while True:
            if not self._queued:  # (or woken for frames flush() has sent since)
                self._parked = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._unpark)
                continue
            frames, self._queued = self._queued, []
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            sent = sockets.send_now(self._stream, data)
            if sent < len(data):  # full, or broken: send_all waits for room, or raises
                self._writing = True
                try:
                    await self._stream.send_all(data[sent:])
                finally:
                    self._writing = False
            self._wrote_all()

    def _wake(self) -> None:
        if self._parked is not None:
            task, self._parked = self._parked, None
            trio.lowlevel.reschedule(task)

    def _wrote_all(self) -> None:
        if self._wrote is not None and not self._queued:
            self._wrote.set()
            self._wrote = None

    def _unpark(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def drain(self) -> None:
        """Wait until everything queued has been written (held frames too)."""
        while self._queued or self._writing:
            self._wake()
            if self._wrote is None:
                self._wrote = trio.Event()
            await self._wrote.wait()
