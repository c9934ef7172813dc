"""The actor table of one node: which actors are in memory, and when they go.

Named after Orleans' ``Catalog``. It activates an actor on its first call, routes each
call to the actor's activation, and collects actors: those idle longer than
``max_inactivity``, and, past ``max_actors``, the least recently used idle ones.

The table is an ``OrderedDict`` kept in order of last call (a call moves its actor to
the end, O(1)), so both kinds of collection read candidates from the front and stop
at the first recent one, instead of scanning or sorting every actor on each run.
Finding an activation, creating one and inserting it happen without a checkpoint in
between, so two concurrent first calls for an id can never make two activations.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, Protocol

import outcome
import trio

from . import failures
from .activation import Activation, ActivationState, DeactivationReason
from .errors import (
    ActorError,
    MethodNotFound,
    NodeStopping,
    NotActive,
    Overloaded,
    TowtruckError,
)
from .failures import FailureLog
from .figures import BUCKETS, CallFigures
from .methods import hook, is_public, methods_of
from .settings import Settings
from .state import ActorContext, StoreOpener, takes_context
from .timers import TimerScheduler

if TYPE_CHECKING:
    from .calls import Call, CallContext
    from .client import Client
    from .reminders import ReminderService

__all__ = ["Catalog", "CatalogObserver", "CatalogStatistics", "Factory"]

#: ``create_actor(id, client)`` or ``create_actor(id, client, context)``: builds the
#: object (or mapping) for an actor id; the context is a :class:`~towtruck.ActorContext`.
Factory = Callable[..., object]

# Actors with a ``deactivate`` hook are deactivated this many at a time, so that
# collecting a million of them never means a million tasks at once.
_DEACTIVATION_BATCH: Final = 100


class CatalogObserver(Protocol):
    """Follows which ids are in the table (the cluster's bloom filter does)."""

    def activated(self, actor_id: str) -> None:
        """``actor_id`` entered the table."""

    def forgotten(self, actor_id: str) -> None:
        """``actor_id`` left the table."""


@dataclasses.dataclass(frozen=True)
class CatalogStatistics:
    """A snapshot of the actor table (see :meth:`Catalog.statistics`).

    Attributes:
        actors: Actors in memory, including those activating or deactivating.
        busy: Actors with a task: running a turn, activating, or deactivating.
        deactivating: Actors deactivating now.
        queued: Calls waiting in mailboxes, summed over all actors.
        max_actors: The cap on ``actors``.
        mailbox_size: The cap on each actor's waiting calls.
        activations: Actors activated since the node started.
        deactivations: Actors that have left since the node started.
    """

    actors: int
    busy: int
    deactivating: int
    queued: int
    max_actors: int
    mailbox_size: int
    activations: int
    deactivations: int


class Catalog:
    """The actor table of one node.

    Args:
        factory: ``create_actor(id, client)``, or ``(id, client, context)``.
        client: Handed to every actor the factory builds.
        settings: ``max_actors``, ``max_inactivity``, ``mailbox_size`` and
            ``call_timeout`` are read from it.
        store: Where actors keep persistent state (opened on first use).
    """

    def __init__(
        self, factory: Factory, client: Client, settings: Settings, store: StoreOpener
    ) -> None:
        self._factory = factory
        self._takes_context = takes_context(factory)
        self._client = client
        self.store = store
        self._table: OrderedDict[str, Activation] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._accepting = True
        self.max_actors = settings.max_actors
        self.max_inactivity = settings.max_inactivity
        self.mailbox_size = settings.mailbox_size
        self.call_timeout = settings.call_timeout
        #: Put in errors, so a caller knows which node answered.
        self.node_id = ""
        #: The time on trio's clock (see :meth:`attach`).
        self.now: Callable[[], float] = trio.current_time
        #: Told of every actor that enters or leaves the table (the bloom filter).
        self.observer: CatalogObserver | None = None
        #: Logs what the actors' code raises (``create_actor`` included), rate-limited.
        self.failures = FailureLog(logging.getLogger("towtruck.actor"))
        #: The timers of every actor in the table (see :mod:`towtruck.timers`).
        self.timers = TimerScheduler()
        #: The node's reminders (see :mod:`towtruck.reminders`), set by the runtime.
        self.reminders: ReminderService | None = None
        #: Cancel scopes of the turns running in their callers' tasks (see
        #: ``Activation._turn_here``), to cancel them when the node stops.
        self.turns_here: set[trio.CancelScope] = set()
        #: Outcomes and latency of the calls its actors answer, by method (see
        #: :mod:`towtruck.figures`); None when the node's ``metrics`` are off.
        self.figures: CallFigures | None = CallFigures() if settings.metrics else None
        #: Calls that failed, by the id of an actor in the table (most have none).
        self.errors: dict[str, int] = {}
        #: Actors that have left since the node started, by why.
        self.left: dict[str, int] = {}
        self._second = 0
        # Counters, kept by the methods below (the activations report through them).
        self._busy = 0
        self._queued = 0
        self._leaving = 0
        self._activations = 0
        self._deactivations = 0

    # What the activations report, counted here (see statistics()).

    def turn_began(self) -> None:
        """An actor began running turns (in its task or its caller's)."""
        self._busy += 1

    def turn_ended(self) -> None:
        """An actor stopped running turns."""
        self._busy -= 1

    def call_queued(self) -> None:
        """A call went into an actor's mailbox."""
        self._queued += 1

    def call_unqueued(self) -> None:
        """A call left an actor's mailbox (to run, refused, or failed)."""
        self._queued -= 1

    def leaving_began(self) -> None:
        """An actor began deactivating."""
        self._leaving += 1

    def leaving_ended(self) -> None:
        """An actor that was deactivating is gone."""
        self._leaving -= 1

    @property
    def factory(self) -> Factory:
        """``create_actor``, as the node was given it."""
        return self._factory

    def this_second(self) -> int:
        """The current second on trio's clock: the same int object all through that
        second (see ``Activation.born``)."""
        second = int(self.now())
        if second != self._second:
            self._second = second
        return self._second

    def attach(self, nursery: trio.Nursery) -> None:
        """Give the catalog the nursery its actors' tasks run in (the node's)."""
        self._nursery = nursery
        # The run's clock, read directly: trio.current_time() finds it anew on every
        # call, a good part of a local call's cost, and a call reads it twice.
        self.now = self.timers.now = trio.lowlevel.current_clock().current_time

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Start an actor's task in the node's nursery."""
        if self._nursery is None:
            raise RuntimeError("the catalog is not attached to a running node")
        self._nursery.start_soon(fn)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, actor_id: object) -> bool:
        return actor_id in self._table

    def ids(self) -> list[str]:
        """The ids in the table, least recently called first."""
        return list(self._table)

    def get(self, actor_id: str) -> Activation | None:
        """The activation of ``actor_id`` if it is in memory."""
        return self._table.get(actor_id)

    def answers_at_once(self, actor_id: str, method: str) -> bool:
        """Whether a call to ``method`` on ``actor_id`` would run to its answer without
        waiting for anything: the actor is in memory and idle, and the method cannot
        suspend (a plain ``def``, or an ``async def`` without ``await``). Not a
        checkpoint."""
        activation = self._table.get(actor_id)
        if activation is None or not activation.idle:
            return False
        found = activation.methods.get(method)
        return (
            found is not None
            and not found.may_suspend
            and (activation.context is None or not activation.context.autosaves)
        )

    def statistics(self) -> CatalogStatistics:
        """Counts describing the table now. Not a checkpoint."""
        return CatalogStatistics(
            actors=len(self._table),
            busy=self._busy,
            deactivating=self._leaving,
            queued=self._queued,
            max_actors=self.max_actors,
            mailbox_size=self.mailbox_size,
            activations=self._activations,
            deactivations=self._deactivations,
        )

    async def invoke(
        self, actor_id: str, method: str, data: Any, context: CallContext, *, create: bool = True
    ) -> bytes:
        """Call ``method`` on the local actor ``actor_id``, activating it if need be.

        A checkpoint. The answer is the method's result as JSON.

        Args:
            create: Activate the actor if it is not in memory; if False, raise
                :class:`NotActive` instead.

        Raises:
            TowtruckError: see :meth:`Activation.call`, plus :class:`MethodNotFound`,
                :class:`Overloaded` and :class:`NodeStopping` from activation.
        """
        activation = self._table.get(actor_id)
        if context.hook:
            return await self._hook(actor_id, method, data, context)
        if activation is not None and actor_id in context.chain:
            found = activation.lookup(method)
            activation.calls += 1
            try:
                return await activation.call_inline(found, data, context)
            except TowtruckError:
                self._actor_failed(actor_id)
                raise
        while activation is None or activation.state is ActivationState.DEACTIVATING:
            if activation is not None:
                await activation.wait_gone(context.deadline)
                activation = self._table.get(actor_id)
            if activation is None:
                if not create:
                    raise NotActive(
                        f"actor {actor_id!r} is not active on {self.node_id}",
                        actor=actor_id,
                        node=self.node_id,
                    )
                if not is_public(method):  # no actor is activated for an impossible call
                    raise MethodNotFound(
                        f"{method[:100]!r} is not a public method name",
                        actor=actor_id,
                        method=method[:100],
                    )
                activation = self._activate(actor_id)
        self._table.move_to_end(actor_id)
        found = activation.lookup(method)
        activation.calls += 1
        figures = self.figures
        if figures is None:
            return await activation.call(found, data, context)
        started = perf_counter()  # (not trio's clock: a C call, no Python frame)
        try:
            answer = await activation.call(found, data, context)
        except TowtruckError as exc:
            figures.failed(method, perf_counter() - started, exc)
            self._actor_failed(actor_id)
            raise
        # CallFigures.done, inlined: this runs on every call.
        elapsed = perf_counter() - started
        counted = figures.methods.get(method) or figures.add(method)  # (method is found.name)
        latency = counted.latency
        latency.counts[bisect_left(BUCKETS, elapsed)] += 1
        latency.sum += elapsed
        counted.ok += 1
        return answer

    def _actor_failed(self, actor_id: str) -> None:
        if actor_id in self._table:  # (counted while it stays in the table)
            self.errors[actor_id] = self.errors.get(actor_id, 0) + 1

    async def _hook(self, actor_id: str, method: str, data: Any, context: CallContext) -> bytes:
        """towtruck's own call of a hook (a reminder's tick): a turn like a call's."""
        reminders = self.reminders
        if reminders is None or method != reminders.method.name:
            raise MethodNotFound(f"{method[:100]!r} is not a hook", actor=actor_id)
        activation = self._table.get(actor_id)
        while activation is None or activation.state is ActivationState.DEACTIVATING:
            if activation is not None:
                await activation.wait_gone(context.deadline)
            activation = self._table.get(actor_id) or self._activate(actor_id)
        return await activation.call(reminders.method, data, context)

    async def rerun(self, actor_id: str, calls: list[Call]) -> None:
        """Run, in their order, the calls that waited for an activation dropped before
        their turns (see ``Activation._drop_if_superseded``) on the actor's next
        activation, and answer their callers."""
        for call in calls:
            if call.reply.abandoned:
                continue
            try:
                answer = await self.invoke(actor_id, call.method.name, call.data, call.context)
            except TowtruckError as exc:
                call.reply.set(outcome.Error(exc))
            else:
                call.reply.set(outcome.Value(answer))

    def _activate(self, actor_id: str) -> Activation:
        if not self._accepting:
            raise NodeStopping("the node is stopping and activates no new actors", actor=actor_id)
        if len(self._table) - self._leaving >= self.max_actors:
            self._make_room(actor_id)
        context = None
        try:
            if self._takes_context:
                context = ActorContext(actor_id, self._client, self.store, self.reminders)
                instance = self._factory(actor_id, self._client, context)
            else:
                instance = self._factory(actor_id, self._client)
            if inspect.isawaitable(instance):
                raise TypeError("create_actor returned an awaitable: it must be a plain def")
            methods = methods_of(instance)
        except BaseException as exc:  # SystemExit too; a real Ctrl-C passes (failures.split)
            passing, own = failures.split(exc)
            if own is None:
                raise
            self.failures.failed(actor_id, "create_actor", own)
            if passing is not None:
                raise passing from None
            error = ActorError(
                f"create_actor failed for actor {actor_id!r}: {failures.describe(own)}",
                exception=type(own).__name__,
                actor=actor_id,
                method="create_actor",
                node=self.node_id,
            )
            raise error from exc
        activation = Activation(actor_id, instance, methods, self)
        self._table[actor_id] = activation
        self._activations += 1
        if self.observer is not None:
            self.observer.activated(actor_id)
        if context is not None:
            activation.context = context
            context.attach(activation)
        if (context is not None and context.keeps_state) or hook(instance, "activate") is not None:
            activation.state = ActivationState.ACTIVATING
            activation._start()
        return activation

    def _make_room(self, actor_id: str) -> None:
        victim = next((a for a in self._table.values() if a.idle), None)
        if victim is None:
            raise Overloaded(
                f"the node holds max_actors ({self.max_actors}) actors and none is idle"
                f" enough to collect, so actor {actor_id!r} cannot be activated",
                actor=actor_id,
            )
        victim.request_deactivation(DeactivationReason.CAPACITY)

    def forget(self, activation: Activation) -> None:
        """Remove an activation that has become invalid (called by the activation)."""
        if self._table.get(activation.id) is activation:
            del self._table[activation.id]
            self._deactivations += 1
            self.errors.pop(activation.id, None)
            reason = activation.reason.value if activation.reason is not None else "failed"
            self.left[reason] = self.left.get(reason, 0) + 1
            if self.observer is not None:
                self.observer.forgotten(activation.id)

    async def collect(self) -> int:
        """Deactivate the actors idle past ``max_inactivity`` and, past ``max_actors``,
        the least recently used idle ones; wait until they have gone.

        A checkpoint. Returns how many actors were collected.
        """
        cutoff = trio.current_time() - self.max_inactivity
        excess = len(self._table) - self._leaving - self.max_actors
        victims: list[tuple[Activation, DeactivationReason]] = []
        for activation in self._table.values():
            if not activation.idle:
                continue
            if activation.touched <= cutoff:
                victims.append((activation, DeactivationReason.IDLE))
            elif len(victims) < excess:
                victims.append((activation, DeactivationReason.CAPACITY))
            else:
                break
        await self._deactivate(victims)
        return len(victims)

    async def deactivate_all(self) -> None:
        """Stop activating, and deactivate every actor: each finishes its mailbox and
        runs ``deactivate``. A checkpoint; returns when the table is empty."""
        self._accepting = False
        while self._table:
            await self._deactivate(
                [(a, DeactivationReason.SHUTDOWN) for a in list(self._table.values())]
            )

    async def _deactivate(self, victims: Iterable[tuple[Activation, DeactivationReason]]) -> None:
        batch: list[Activation] = []
        for activation, reason in victims:
            activation.request_deactivation(reason)
            if activation.state is not ActivationState.INVALID:
                batch.append(activation)
            if len(batch) >= _DEACTIVATION_BATCH:
                await self._wait_gone(batch)
                batch = []
        await self._wait_gone(batch)

    async def _wait_gone(self, batch: list[Activation]) -> None:
        await trio.lowlevel.checkpoint()
        # Each deactivation is bounded by call_timeout inside the actor's task; the
        # extra second only keeps this wait from racing that bound.
        with trio.move_on_after(self.call_timeout + 1):
            for activation in batch:
                await activation.wait_gone(math.inf)

    def cancel_turns_here(self) -> None:
        """Cancel the turns running in callers' tasks: the node is stopping now."""
        for scope in list(self.turns_here):
            scope.cancel()
