"""The writing half of a lane, on either end: frames queued by any task, sent by one."""

from __future__ import annotations

import trio

from . import sockets

__all__ = ["FrameWriter"]


class FrameWriter:
    """Sends queued frames, as many per write as have queued meanwhile. Senders only
    queue (no checkpoint, nothing to cancel), so a sender leaves at its deadline even
    when the peer is slow to read; one task per lane writes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._queued: list[bytes] = []
        self._due = trio.Event()
        self._writing = False
        self._wrote = trio.Event()

    def send(self, frame: bytes, *, alone: bool = False) -> None:
        """Queue a frame. Not a checkpoint.

        ``alone``: the sender knows of no other frame coming soon (the lane is quiet),
        so the frame goes out at once, from the sender's own task, if nothing is being
        written: that saves waking the writer on both ends of a lightly loaded lane.
        Under load frames queue, and go out many to a system call.
        """
        if alone and not self._writing and not self._queued:
            sent = sockets.send_now(self._stream, frame)
            if sent == len(frame):
                return
            frame = frame[sent:]
        self._queued.append(frame)
        self._due.set()

    async def run(self) -> None:
        """Write what is queued, as it comes, until cancelled.

        Raises:
            trio.BrokenResourceError: the lane broke.
        """
        while True:
            await self._due.wait()
            self._due = trio.Event()
            data, self._queued = b"".join(self._queued), []
            self._writing = True
            try:
                await self._stream.send_all(data)
            finally:
                self._writing = False
            self._wrote.set()
            self._wrote = trio.Event()

    async def drain(self) -> None:
        """Wait until everything queued has been written."""
        while self._queued or self._writing:
            await self._wrote.wait()
