"""Timers: turns an actor schedules for itself while it is in memory.

``context.timer(name, callback, every=..., after=...)`` asks for ``callback`` to run
as a turn of the actor (never interleaved with a call) after ``after`` seconds, then
every ``every`` seconds, until it is cancelled or the activation ends. A timer does
not keep an idle actor in memory unless it is made with ``keep_alive=True``; a tick
that raises is logged, and the timer goes on.

No timer has a task of its own: one :class:`TimerScheduler` per node keeps every
armed timer in a heap on trio's clock, and one task of its own sleeps until the first
is due, then drops each due tick into its actor's mailbox. A tick whose previous tick
has not run yet is skipped rather than queued behind it, so a slow or stuck actor
never piles up ticks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from .calls import Call, CallContext
from .methods import Method

if TYPE_CHECKING:
    from .activation import Activation

__all__ = ["Tick", "Timer", "TimerScheduler"]

logger = logging.getLogger("towtruck.actor")

#: The shortest period or delay a timer may have.
MIN_PERIOD: Final = 0.001


class Timer:
    """A timer of one activation (see ``ActorContext.timer``).

    Attributes:
        name: Its name among the actor's timers (a new timer of the same name
            replaces it).
        every: Seconds between ticks; None for a timer that ticks once.
        due: When it ticks next, on trio's clock (``inf`` once it is done).
        keep_alive: Its ticks count as calls, keeping an idle actor from collection.
        ticks: How many ticks have run.
    """

    __slots__ = (
        "_activation",
        "_pending",
        "_scheduler",
        "cancelled",
        "due",
        "every",
        "keep_alive",
        "method",
        "name",
        "ticks",
    )

    def __init__(
        self,
        name: str,
        callback: Callable[..., Any],
        *,
        every: float | None,
        after: float,
        keep_alive: bool,
    ) -> None:
        self.name = name
        self.method = Method(name, callback, bound=False)
        self.every = every
        self.due = after  # relative until armed
        self.keep_alive = keep_alive
        self.cancelled = False
        self.ticks = 0
        self._pending = False  # a tick waits in the mailbox or runs
        self._activation: Activation | None = None
        self._scheduler: TimerScheduler | None = None

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"due {self.due:.3f}"
        return f"<Timer {self.name!r} every={self.every!r} {state}>"

    def cancel(self) -> None:
        """Stop it: no tick starts after this returns (one running finishes)."""
        self.cancelled = True
        self.due = math.inf

    def _arm(self, activation: Activation, scheduler: TimerScheduler) -> None:
        self._activation = activation
        self._scheduler = scheduler
        self.due += scheduler.now()
        scheduler.schedule(self)

    def _fire(self, now: float) -> None:
        """Drop a tick into the actor's mailbox (unless the last one has not run),
        and schedule the next."""
        activation = self._activation
        if self.cancelled or activation is None:
            return
        if not self._pending:
            self._pending = activation.tick(self)
        if self.every is None:
            self.due = math.inf
        else:
            # The next tick on the timer's own beat; beats missed while late are skipped.
            self.due = max(self.due + self.every, now + self.every * 0.5)
            assert self._scheduler is not None
            self._scheduler.schedule(self)

    def _ran(self) -> None:
        self._pending = False
        self.ticks += 1


class Tick(Call):
    """A timer's turn in the actor's mailbox: nobody waits for its answer, and however
    it ends (run, refused, late) the timer may tick again."""

    __slots__ = ("timer",)

    def __init__(self, timer: Timer, deadline: float) -> None:
        super().__init__(timer.method, None, CallContext((), deadline))
        self.timer = timer
        self.reply = _Ended(timer)  # type: ignore[assignment]


class _Ended:
    """A tick's reply: tells its timer that the tick is over."""

    __slots__ = ("_timer",)

    abandoned = False

    def __init__(self, timer: Timer) -> None:
        self._timer = timer

    def set(self, result: object) -> None:
        self._timer._ran()


class TimerScheduler:
    """Every armed timer of a node, in a heap on trio's clock, and the one task that
    fires them (:meth:`run`, a service of the node's runtime)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._sleeping: trio.CancelScope | None = None
        #: The time on trio's clock (the catalog's, read directly once attached).
        self.now: Callable[[], float] = trio.current_time
        #: Ticks dropped into mailboxes since the node started.
        self.fired = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, timer: Timer) -> None:
        """Put ``timer`` in the heap at its ``due`` time; wake the task if it is the
        first. Not a checkpoint."""
        heapq.heappush(self._heap, (timer.due, next(self._order), timer))
        sleeping = self._sleeping
        if sleeping is not None and timer.due < sleeping.deadline:
            sleeping.deadline = timer.due

    async def run(self) -> None:
        """Fire timers as they fall due, until cancelled."""
        heap = self._heap
        while True:
            now = self.now()
            while heap and heap[0][0] <= now:
                due, _, timer = heapq.heappop(heap)
                if timer.due == due and not timer.cancelled:
                    self.fired += 1
                    timer._fire(now)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as sleeping:
                self._sleeping = sleeping
                await trio.sleep_forever()
            self._sleeping = None
