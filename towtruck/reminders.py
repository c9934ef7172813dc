"""Durable reminders: ticks an actor asks for that outlive it, its node and restarts.

``await context.remind(name, after=..., every=..., at=..., data=...)`` keeps a row in
the state store (:class:`~towtruck.storage.base.ReminderRow`). The rows are spread
over :data:`~towtruck.storage.base.BUCKETS` buckets by a hash of the actor's id, and
placement gives each bucket to one node, as it gives actors; every ``reminder_refresh``
each node loads the rows of its own buckets due soon (never every row), keeps them in
a heap on the wall clock, and when one falls due, calls the actor: placement routes
the call to the node that owns the actor, which activates it if need be.

That call runs as a turn of the actor (never beside a call). The turn reads the row
again: if it is gone (forgotten) or has moved on (replaced, or this tick was delivered
already), nothing happens. Otherwise the actor's ``receive_reminder(reminder)`` runs,
and only after it returned is the tick marked done in the store, conditionally on the
row being unchanged. So:

- a tick is delivered at least once: a node killed mid-tick leaves the row due, and
  whichever node owns the bucket next delivers it again, with the same ``tick_id``;
- without failures, exactly once: the check and the mark are in the actor's turn;
- after an outage of N periods, one tick comes, with ``missed = N - 1``;
- once ``forget`` has returned, no tick of that reminder starts: the turn reads the
  store first.
"""

from __future__ import annotations

import dataclasses
import heapq
import inspect
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from . import codec
from .calls import CallContext, HookContext
from .errors import TowtruckError
from .methods import Method, hook
from .storage.base import BUCKETS, ReminderRow

if TYPE_CHECKING:
    from .catalog import Catalog
    from .state import StoreOpener

__all__ = ["HOOK", "Reminder", "ReminderService"]

logger = logging.getLogger("towtruck.reminders")

#: The actor's method a tick calls (reserved: never callable over HTTP).
HOOK: Final = "receive_reminder"
#: Most due reminders a node loads from the store at each refresh.
_LOAD: Final = 10_000
#: Ticks a node delivers at once (each waits for its actor's turn).
_DELIVERERS: Final = 100

Invoke = Callable[[str, str, Any, CallContext], Awaitable[bytes]]


@dataclasses.dataclass(frozen=True)
class Reminder:
    """A tick of a durable reminder, as ``receive_reminder`` gets it (and as
    ``context.reminders()`` lists them, with ``scheduled_at`` the next due time).

    Attributes:
        name: The reminder's name among the actor's.
        data: What ``remind`` was given (JSON).
        scheduled_at: When this tick was due, in seconds since the Unix epoch.
        tick_id: The same for every delivery of this tick (a duplicate after a node
            failed carries it: drop it), different for every other tick.
        missed: Ticks that fell due while no node could deliver them (after an outage
            of N periods, one tick comes with ``missed = N - 1``).
        period: Seconds between ticks; None for a reminder that fires once.
    """

    name: str
    data: Any
    scheduled_at: float
    tick_id: str
    missed: int = 0
    period: float | None = None

    @classmethod
    def of(cls, row: ReminderRow, missed: int = 0) -> Reminder:
        return cls(row.name, codec.loads(row.data), row.due, row.tick_id, missed, row.period)


def next_tick(row: ReminderRow, now: float) -> tuple[int, float | None]:
    """For a tick of ``row`` delivered at ``now``: how many ticks were missed, and when
    the next is due (None: the reminder is done), on the reminder's own beat."""
    if row.period is None:
        return 0, None
    missed = max(0, math.floor((now - row.due) / row.period))
    return missed, row.due + (missed + 1) * row.period


class ReminderService:
    """A node's part of the reminders: it loads its buckets' due rows, delivers each on
    time, and runs deliveries in the actors' turns (:meth:`deliver`). One per runtime;
    :meth:`run` is a service of it.

    Args:
        catalog: The node's actor table (for the failure log and hooks).
        store: The node's state store.
        invoke: How a tick reaches its actor (the runtime's call path).
        refresh: Seconds between loads of the due rows.
        call_timeout: A tick's deadline.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: StoreOpener,
        invoke: Invoke,
        *,
        refresh: float,
        call_timeout: float,
        min_period: float = 1.0,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._invoke = invoke
        self.refresh = refresh
        #: The shortest period a reminder may have.
        self.min_period = min_period
        self._call_timeout = call_timeout
        #: Seconds since the Unix epoch (tests give a clock that follows trio's).
        self.clock: Callable[[], float] = time.time
        #: Whether this node delivers a bucket's reminders (a cluster's placement).
        self.owns: Callable[[int], bool] = lambda bucket: True
        #: The turn a tick runs in an actor (the catalog calls it for hook calls).
        self.method = Method(HOOK, self._turn, bound=True)
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._scheduled: dict[tuple[str, str], ReminderRow] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._order = itertools.count()
        self._sleeping: trio.CancelScope | None = None
        self._due, self._deliveries = trio.open_memory_channel[ReminderRow](math.inf)
        #: Ticks delivered (the actor's turn ran), and of those more than a second late.
        self.delivered = 0
        self.late = 0
        #: Deliveries that did not reach their actor (tried again at the next refresh).
        self.failed = 0

    def statistics(self) -> dict[str, int]:
        """Figures for ``/health``."""
        now = self.clock()
        due = sum(1 for row in self._scheduled.values() if row.due <= now)
        return {
            "scheduled": len(self._scheduled),
            "due": due,
            "delivered": self.delivered,
            "late": self.late,
            "failed": self.failed,
        }

    # Scheduling, on the node that owns the bucket.

    def schedule(self, row: ReminderRow) -> None:
        """Deliver ``row``'s next tick at its due time, if this node owns its bucket.
        Not a checkpoint."""
        key = (row.actor, row.name)
        if not self.owns(row.bucket) or key in self._in_flight:
            return
        known = self._scheduled.get(key)
        if known == row:
            return
        self._scheduled[key] = row
        heapq.heappush(self._heap, (row.due, next(self._order), key))
        sleeping = self._sleeping
        if sleeping is not None:
            sleeping.deadline = min(sleeping.deadline, self._trio_time(row.due))

    def unschedule(self, actor_id: str, name: str) -> None:
        """Drop a reminder from this node's schedule (it was forgotten)."""
        self._scheduled.pop((actor_id, name), None)

    def _trio_time(self, due: float) -> float:
        return trio.current_time() + (due - self.clock())

    async def run(self) -> None:
        """Load the due rows every ``refresh`` and deliver them on time, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._load_periodically)
            for _ in range(_DELIVERERS):
                nursery.start_soon(self._deliver_each)
            heap = self._heap
            while True:
                now = self.clock()
                while heap and heap[0][0] <= now:
                    due, _, key = heapq.heappop(heap)
                    row = self._scheduled.get(key)
                    if row is not None and row.due == due and key not in self._in_flight:
                        self._in_flight.add(key)
                        self._due.send_nowait(row)
                deadline = self._trio_time(heap[0][0]) if heap else math.inf
                with trio.CancelScope(deadline=deadline) as sleeping:
                    self._sleeping = sleeping
                    await trio.sleep_forever()
                self._sleeping = None

    async def _load_periodically(self) -> None:
        warned = -math.inf
        while True:
            try:
                await self.load()
            except TowtruckError as exc:
                if trio.current_time() - warned > 60:
                    warned = trio.current_time()
                    logger.warning("reminders could not be loaded: %s", exc.message)
            await trio.sleep(self.refresh)

    async def load(self) -> None:
        """Load the rows of this node's buckets due before the next refresh is over.
        A checkpoint. Rows of buckets this node no longer owns are dropped."""
        store = await self._store.get(create=False)
        if store is None:
            return  # no store yet (an SQLite file nobody created): nothing can be due
        buckets = self._buckets()
        for key, row in list(self._scheduled.items()):
            if row.bucket not in buckets:
                del self._scheduled[key]
        if not buckets:
            return
        rows = await store.due_reminders(list(buckets), self.clock() + 2 * self.refresh, _LOAD)
        for row in rows:
            self.schedule(row)

    def _buckets(self) -> set[int]:
        """The buckets this node owns (:attr:`owns` remembers them per placement)."""
        return {b for b in range(BUCKETS) if self.owns(b)}

    async def _deliver_each(self) -> None:
        """One of the node's deliverers: they take due rows one at a time, so a burst
        of ticks costs no task each."""
        async for row in self._deliveries:
            await self._deliver(row)

    async def _deliver(self, row: ReminderRow) -> None:
        key = (row.actor, row.name)
        try:
            payload = {"actor": row.actor, "name": row.name, "generation": row.generation}
            payload["due"] = row.due
            context = HookContext((), trio.current_time() + self._call_timeout)
            try:
                answer = codec.loads(await self._invoke(row.actor, HOOK, payload, context))
            except TowtruckError as exc:
                self.failed += 1
                logger.debug("reminder %r of actor %r not delivered: %s", row.name, row.actor, exc)
                return  # still due in the store: the next load brings it back
        finally:
            self._in_flight.discard(key)
        if self._scheduled.get(key) == row:
            del self._scheduled[key]
        following = answer.get("next") if isinstance(answer, dict) else None
        if following is not None:  # on the beat, not at the next load
            self.schedule(dataclasses.replace(row, due=following))

    # The tick's turn, on the node that holds the actor.

    async def _turn(self, instance: object, payload: dict[str, Any]) -> dict[str, Any]:
        """Deliver a tick to the actor, in its turn: check the row, call
        ``receive_reminder``, mark the tick done."""
        actor_id, name = payload["actor"], payload["name"]
        store = await self._store.get()
        row = await store.reminder(actor_id, name)
        if row is None or row.generation != payload["generation"] or row.due != payload["due"]:
            return {"delivered": False}
        now = self.clock()
        missed, following = next_tick(row, now)
        receive: Callable[..., Any] | None = hook(instance, HOOK)
        if receive is None:
            logger.warning(
                "actor %r has reminder %r but no receive_reminder method", actor_id, name
            )
        else:
            try:
                result = receive(Reminder.of(row, missed))
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # the actor's failure: logged; the tick is delivered
                self._catalog.failures.failed(actor_id, HOOK, exc)
        done = await store.reminder_done(
            actor_id, name, generation=row.generation, due=row.due, next_due=following
        )
        self.delivered += 1
        if now - row.due > 1.0:
            self.late += 1
        return {"delivered": True, "next": following if done else None}
