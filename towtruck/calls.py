"""One call on its way through a node: its context, the message, the reply slot, and
the mailbox it waits in.

A call carries a :class:`CallContext`: the chain of actor ids it passed through and
its absolute deadline on trio's clock. While an actor's turn runs, the context of the
call it serves (with the actor's own id appended) is the current one, so a call the
actor makes extends the chain and inherits the deadline. That is what lets actor 1's
``hello`` call ``client.invoke(1, "goodbye")`` (reentrancy along the chain) and what
makes a whole tree of nested calls give up together when the first caller does.
"""

from __future__ import annotations

import contextvars
from collections import deque
from typing import Any, ClassVar, Final

import outcome
import trio

from .errors import Backlogged, CallInterrupted, CallTimeout, NodeStopping
from .methods import Method

__all__ = [
    "Call",
    "CallContext",
    "HookContext",
    "Mailbox",
    "Reply",
    "ScopedCallContext",
    "backlogged",
    "cancelled",
    "current_context",
    "interrupted",
    "late",
    "stopped",
]

# How much of each new turn's duration goes into the moving average: enough to follow
# an actor that slows down within a few turns, little enough that one odd turn does
# not swing it.
_TURN_WEIGHT: Final = 0.25


class CallContext:
    """Where a call comes from and until when it may take.

    Attributes:
        chain: Ids of the actors whose turns are waiting on this call, outermost first.
        deadline: When the caller gives up, on trio's clock.
        bound: ``deadline`` as stored, without asking trio for the caller's cancel
            scopes (see :class:`ScopedCallContext`; the same for other contexts).
        hops: How many times the call has been forwarded between nodes.
        caller_yields: The caller yields to trio's scheduler as soon as the call
            returns (a lane's task waiting for its next call), so a call that ran
            without yielding need not yield once more before it returns.
        hook: towtruck's own call of a hook (a reminder's tick), which no call from
            outside the cluster can make (see :class:`HookContext`).
        trace: The OpenTelemetry span context of the call this one was made from, if
            tracing is on (see :mod:`towtruck.tracing`).
    """

    __slots__ = ("caller_yields", "chain", "deadline", "hops", "trace")

    bound: float  # (the slot ``deadline``'s own descriptor, set below)

    hook: ClassVar[bool] = False

    def __init__(
        self,
        chain: tuple[str, ...],
        deadline: float,
        hops: int = 0,
        *,
        caller_yields: bool = False,
        trace: Any = None,
    ) -> None:
        self.chain = chain
        self.deadline = deadline
        self.hops = hops
        self.caller_yields = caller_yields
        self.trace = trace

    def with_trace(self, trace: Any) -> CallContext:
        """A copy (of the same class) whose calls descend from ``trace``."""
        return type(self)(
            self.chain, self.deadline, self.hops, caller_yields=self.caller_yields, trace=trace
        )

    def __repr__(self) -> str:
        return f"CallContext(chain={self.chain!r}, deadline={self.deadline!r}, hops={self.hops})"


# The deadline as stored, read without asking trio (the slot's own descriptor): for a
# CallContext the same as ``deadline``; for a ScopedCallContext, before its caller's
# cancel scopes have been asked.
_DEADLINE: Final = CallContext.__dict__["deadline"]
setattr(CallContext, "bound", _DEADLINE)  # noqa: B010 (a read of the slot at C speed)


class ScopedCallContext(CallContext):
    """The context of a call made through :class:`~towtruck.Client`: its deadline is
    also the caller's cancel scopes', which trio is asked for only when something
    reads ``deadline``; once asked, it is a plain :class:`CallContext`.

    Asking (``trio.current_effective_deadline``, a walk up the caller's scopes) is a
    fifth of a local call's cost, and a call that runs to its end in one step in the
    caller's own task (an ``async def`` without ``await``) needs no deadline: it only
    checks ``bound`` (``call_timeout`` and the calling turn's deadline), after checking
    that its caller is not cancelled. Whatever else reads ``deadline`` does so in the
    caller's task before towtruck opens a scope of its own (a queued call, a forwarded
    one, a turn that may wait), so it gets the caller's scopes.
    """

    __slots__ = ()  # (the layout of a CallContext, which it becomes once asked)

    def __init__(self, chain: tuple[str, ...], deadline: float, *, trace: Any = None) -> None:
        _DEADLINE.__set__(self, deadline)
        self.chain = chain
        self.hops = 0
        self.caller_yields = False
        self.trace = trace

    @property
    def deadline(self) -> float:
        deadline: float = min(_DEADLINE.__get__(self), trio.current_effective_deadline())
        self.deadline = deadline
        return deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        _DEADLINE.__set__(self, value)
        self.__class__ = CallContext  # type: ignore[assignment]  # (asked: plain reads)

    def with_trace(self, trace: Any) -> CallContext:
        """A plain copy whose calls descend from ``trace``, its deadline asked."""
        return CallContext(self.chain, self.deadline, self.hops, trace=trace)


class HookContext(CallContext):
    """The context of towtruck's own call of a hook (a reminder's tick): a class of its
    own, so that every other call pays nothing for the difference."""

    __slots__ = ()

    hook: ClassVar[bool] = True


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


class Mailbox(deque[Call]):
    """The calls waiting for an actor, oldest first, and how long its turns take.

    It exists only while calls wait (the actor's task drops it when it has none), so
    an idle actor carries none of this. From the turn times the actor's task measures,
    it says when a call added now would start: admission refuses a call that would not
    start before its deadline at once (CoDel-style servers judge by the time spent
    queueing, not by the queue's length), instead of letting it time out in here.

    Attributes:
        turn: Moving average of the actor's turns, in seconds; 0 until one is measured.
        started: When the turn running now started, on trio's clock.
    """

    __slots__ = ("started", "turn")

    def __init__(self) -> None:
        super().__init__()
        self.turn = 0.0
        self.started = 0.0

    def measured(self, duration: float) -> None:
        """Count a turn that took ``duration`` seconds into :attr:`turn`."""
        turn = self.turn
        self.turn = duration if not turn else turn + (duration - turn) * _TURN_WEIGHT

    def start_of(self, position: int, now: float) -> float:
        """When the call at ``position`` (0: the next to run) would start, if turns
        keep taking :attr:`turn`: after the rest of the running turn and those ahead."""
        turn = self.turn
        return max(now, self.started + turn) + position * turn


# What a call to an actor fails with when the actor's code is not at fault, worded once.


def late(actor: str, method: str) -> CallTimeout:
    """The call reached its deadline before its turn began."""
    return CallTimeout(
        f"call to {method!r} on actor {actor!r} reached its deadline before it ran",
        actor=actor,
        method=method,
    )


def backlogged(actor: str, method: str, mailbox: Mailbox) -> Backlogged:
    """The call would not start before its deadline, given the calls waiting in
    ``mailbox`` and how long the actor's turns take."""
    return Backlogged(
        f"actor {actor!r} has {len(mailbox)} calls waiting, at about"
        f" {mailbox.turn:.3g} s a turn: this call to {method!r} could not start"
        " before its deadline",
        actor=actor,
        method=method,
        waiting=len(mailbox),
        turn=round(mailbox.turn, 6),
    )


def interrupted(actor: str) -> CallInterrupted:
    """The node stopped while the call's turn ran."""
    return CallInterrupted(
        f"the node stopped while actor {actor!r} was running this call", actor=actor
    )


def stopped(actor: str) -> NodeStopping:
    """The node stopped before the call's turn began."""
    return NodeStopping(f"the node stopped before actor {actor!r} answered", actor=actor)


def cancelled(actor: str, method: str, deadline: float) -> CallTimeout | CallInterrupted:
    """The call's turn was cancelled: at its deadline, or because the node stopped."""
    if trio.current_time() < deadline:
        return interrupted(actor)
    return CallTimeout(
        f"{method!r} on actor {actor!r} was cancelled at the call's deadline",
        actor=actor,
        method=method,
    )
