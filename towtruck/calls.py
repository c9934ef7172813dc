"""One call on its way through a node: its context, the message, and the reply slot.

A call carries a :class:`CallContext`: the chain of actor ids it passed through and
its absolute deadline on trio's clock. While an actor's turn runs, the context of the
call it serves (with the actor's own id appended) is the current one, so a call the
actor makes extends the chain and inherits the deadline. That is what lets actor 1's
``hello`` call ``client.invoke(1, "goodbye")`` (reentrancy along the chain) and what
makes a whole tree of nested calls give up together when the first caller does.
"""

from __future__ import annotations

import contextvars
from typing import Any

import outcome
import trio

from .methods import Method

__all__ = ["Call", "CallContext", "Reply", "current_context"]


class CallContext:
    """Where a call comes from and until when it may take.

    Attributes:
        chain: Ids of the actors whose turns are waiting on this call, outermost first.
        deadline: When the caller gives up, on trio's clock.
        hops: How many times the call has been forwarded between nodes.
        caller_yields: The caller yields to trio's scheduler as soon as the call
            returns (a lane's task waiting for its next call), so a call that ran
            without yielding need not yield once more before it returns.
    """

    __slots__ = ("caller_yields", "chain", "deadline", "hops")

    def __init__(
        self,
        chain: tuple[str, ...],
        deadline: float,
        hops: int = 0,
        *,
        caller_yields: bool = False,
    ) -> None:
        self.chain = chain
        self.deadline = deadline
        self.hops = hops
        self.caller_yields = caller_yields

    def __repr__(self) -> str:
        return f"CallContext(chain={self.chain!r}, deadline={self.deadline!r}, hops={self.hops})"


#: The context of the call whose turn is running in this task, if any.
current_context: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "towtruck.current_context", default=None
)


class Reply:
    """A one-shot slot a caller parks on until the actor's turn fills it.

    A memory channel per call would do the same job at several times the cost; this is
    the primitive trio builds its channels from: the caller parks its task, the actor
    reschedules it with the outcome. A caller that is cancelled while parked marks the
    reply abandoned, so the actor skips the call if it has not started it yet.
    """

    __slots__ = ("_outcome", "_task", "abandoned")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._outcome: outcome.Outcome[bytes] | None = None
        self.abandoned = False

    def set(self, result: outcome.Outcome[bytes]) -> None:
        """Fill the slot and wake the caller; does nothing if the caller left."""
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, result)
        elif not self.abandoned:
            self._outcome = result

    async def wait(self) -> bytes:
        """Park until the slot is filled, then return its value or raise its error.

        A checkpoint. If cancelled, the reply is abandoned and whatever the actor
        answers later is dropped.
        """
        if self._outcome is not None:
            await trio.lowlevel.checkpoint()
            return self._outcome.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            self.abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        result: bytes = await trio.lowlevel.wait_task_rescheduled(abort)
        return result


class Call:
    """A message in an actor's mailbox: what to run, on what, for whom."""

    __slots__ = ("context", "data", "method", "reply")

    def __init__(self, method: Method, data: Any, context: CallContext) -> None:
        self.method = method
        self.data = data
        self.context = context
        self.reply = Reply()
