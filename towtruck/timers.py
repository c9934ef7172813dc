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
import logging
import math
import weakref
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
        due: When it ticks next, on trio's clock (``inf`` once it has ended).
        keep_alive: Its ticks count as calls, keeping an idle actor from collection.
        ticks: How many ticks have run.
    """

    # Kept small: an idle actor with a timer should stay within a kilobyte.
    __slots__ = ("_activation", "_pending", "due", "every", "keep_alive", "method", "name", "ticks")

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
        self.method: Method | Callable[..., Any] = callback  # a Method once armed
        self.every = every
        self.due = after  # relative until armed
        self.keep_alive = keep_alive
        self.ticks = 0
        self._pending = False  # a tick waits in the mailbox or runs
        self._activation: Activation | None = None

    def __repr__(self) -> str:
        return f"<Timer {self.name!r} every={self.every!r} due={self.due!r}>"

    def __lt__(self, other: Timer) -> bool:  # (heap entries of equal times)
        return id(self) < id(other)

    @property
    def ended(self) -> bool:
        """It was cancelled, its activation ended, or it ticked its once."""
        return self.due == math.inf

    def cancel(self) -> None:
        """Stop it: no tick starts after this returns (one running finishes)."""
        self.due = math.inf
        self._activation = None

    def _arm(self, activation: Activation, scheduler: TimerScheduler) -> None:
        self._activation = activation
        callback = self.method
        if not isinstance(callback, Method):
            self.method = _method(self.name, callback, activation.instance)
        self.due += scheduler.now()
        scheduler.schedule(self)

    def _fire(self, now: float, scheduler: TimerScheduler) -> None:
        """Drop a tick into the actor's mailbox (unless the last one has not run),
        and schedule the next."""
        activation = self._activation
        if activation is None:
            return
        if not self._pending:
            self._pending = activation.tick(self)
        if self.every is None:
            self.due = math.inf
        else:
            # The next tick on the timer's own beat; beats missed while late are skipped.
            self.due = max(self.due + self.every, now + self.every * 0.5)
            scheduler.schedule(self)

    def _ran(self) -> None:
        self._pending = False
        self.ticks += 1


def _method(name: str, callback: Callable[..., Any], instance: object) -> Method:
    """The :class:`Method` a timer's ticks call: for a method of the actor itself
    (``self.flush``), one shared by every actor of its class; else one of its own."""
    function = getattr(callback, "__func__", None)
    if function is None or getattr(callback, "__self__", None) is not instance:
        return Method(name, callback, bound=False)
    method = _SHARED.get(function)
    if method is None:
        method = _SHARED[function] = Method(function.__name__, function, bound=True)
    return method


_SHARED: weakref.WeakKeyDictionary[Callable[..., Any], Method] = weakref.WeakKeyDictionary()


class Tick(Call):
    """A timer's turn in the actor's mailbox: nobody waits for its answer, and however
    it ends (run, refused, late) the timer may tick again."""

    __slots__ = ("timer",)

    def __init__(self, timer: Timer, deadline: float) -> None:
        method = timer.method
        assert isinstance(method, Method)  # (armed)
        super().__init__(method, None, CallContext((), deadline))
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
        self._heap: list[tuple[float, Timer]] = []
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
        heapq.heappush(self._heap, (timer.due, timer))
        sleeping = self._sleeping
        if sleeping is not None and timer.due < sleeping.deadline:
            sleeping.deadline = timer.due

    async def run(self) -> None:
        """Fire timers as they fall due, until cancelled."""
        heap = self._heap
        while True:
            now = self.now()
            while heap and heap[0][0] <= now:
                due, timer = heapq.heappop(heap)
                if timer.due == due:
                    self.fired += 1
                    timer._fire(now, self)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as sleeping:
                self._sleeping = sleeping
                await trio.sleep_forever()
            self._sleeping = None
