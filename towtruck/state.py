"""An actor's context and its persistent states: what a factory's third parameter gives.

``create_actor(id, client, context)`` may call ``context.persistent(...)`` for each
named state the actor keeps. Before ``activate`` runs, the activation *claims* the
actor in the store (:mod:`towtruck.storage`): its epoch goes up by one and its states
are loaded. Every write names that epoch and the state's etag, so once a newer
activation has claimed the actor (on another node, after a partition or a stall), no
write of this one lands: it fails with :class:`~towtruck.errors.StateConflict`, and the
activation is dropped at once, without ``deactivate``, so the next call claims afresh.

If the store fails (:class:`~towtruck.errors.StoreUnavailable`), nothing was written,
and the state's value goes back to what the store holds. A write whose outcome is not
known (its call was cancelled while the store had it, or the store had it and did not
answer: :class:`~towtruck.errors.CallInterrupted`) drops the activation as a conflict
does, so the next one reads what the store holds.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, overload

import trio

from . import codec
from .errors import CallInterrupted, StateConflict, StoreUnavailable, TowtruckError
from .reminders import Reminder
from .settings import sqlite_path
from .timers import MIN_PERIOD, Timer

if TYPE_CHECKING:
    from .activation import Activation
    from .client import Client
    from .reminders import ReminderService
    from .storage import Store, Stored

__all__ = ["ActorContext", "PersistentState", "StoreOpener", "takes_context"]


class StoreOpener:
    """A node's state store, opened when an actor first needs it (so a node whose
    actors keep no state never creates a file or a connection).

    Args:
        url: See :mod:`towtruck.storage`.
        timeout: Seconds a store operation may take.
    """

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.opened: Store | None = None
        self._lock = trio.Lock()

    @overload
    async def get(self) -> Store: ...

    @overload
    async def get(self, *, create: bool) -> Store | None: ...

    async def get(self, *, create: bool = True) -> Store | None:
        """The store, opening it on first use. A checkpoint.

        Args:
            create: False: if opening the store would create it (an SQLite file that
                does not exist yet), do not: answer None.

        Raises:
            StoreUnavailable: it cannot be opened now (the next call tries again).
        """
        if self.opened is None and not create and self._would_create():
            await trio.lowlevel.checkpoint()
            return None
        if self.opened is None:
            async with self._lock:
                if self.opened is None:
                    from .storage import open_store

                    self.opened = await open_store(self.url, timeout=self.timeout)
        return self.opened

    def _would_create(self) -> bool:
        if not self.url.startswith("sqlite:"):
            return False
        return not os.path.exists(sqlite_path(self.url))

    async def aclose(self) -> None:
        """Close the store if it was opened."""
        store, self.opened = self.opened, None
        if store is not None:
            await store.aclose()


class ActorContext:
    """What towtruck tells an actor about itself, beyond its id and client.

    Attributes:
        id: The actor's id.
        client: Calls other actors (the same as the factory's second argument).
        epoch: How many times the actor has been claimed in the store, this activation
            included: it only ever grows, so it fences side effects the actor makes
            elsewhere (send it along; refuse anything stamped with an older one).
            0 until the activation has claimed, and for actors without persistent state.
    """

    __slots__ = (
        "_activation",
        "_opener",
        "_reminders",
        "_states",
        "_timers",
        "_trouble",
        "autosaves",
        "client",
        "epoch",
        "id",
        "keeps_state",
    )

    def __init__(
        self,
        actor_id: str,
        client: Client,
        opener: StoreOpener,
        reminders: ReminderService | None = None,
    ) -> None:
        self.id = actor_id
        self.client = client
        self.epoch = 0
        self._opener = opener
        self._reminders = reminders
        self._states: list[PersistentState] = []
        #: The actor asked for persistent state: activating it claims it.
        self.keeps_state = False
        #: A state is written at the end of turns (so turns may wait on the store).
        self.autosaves = False
        self._timers: list[Timer] | None = None  # (a list: smaller than a dict)
        self._activation: Activation | None = None
        #: Why this activation must go (a conflict, a write of unknown outcome), or None.
        self._trouble: TowtruckError | None = None

    def __repr__(self) -> str:
        return f"<ActorContext {self.id!r} epoch {self.epoch}>"

    def persistent(
        self, name: str = "state", default: Any = None, *, autosave: bool = False
    ) -> PersistentState:
        """A state the actor keeps in the store, loaded before ``activate`` runs.

        Call it in the factory (or the actor's ``__init__``), once per name.

        Args:
            name: Several states per actor are allowed, each by its own name.
            default: The value while nothing is stored: a callable (``dict``) is
                called, anything else is deep-copied.
            autosave: Write the state at the end of every turn that changed it (its
                JSON compared with what was stored), and put back the stored value
                after a turn that raised.

        Raises:
            RuntimeError: called after the actor was loaded, or twice for one name.
        """
        if self.epoch:
            raise RuntimeError(
                f"actor {self.id!r}: call context.persistent({name!r}) in create_actor or"
                " __init__: states are loaded before activate() runs"
            )
        if any(state.name == name for state in self._states):
            raise RuntimeError(f"actor {self.id!r} already has a persistent state {name!r}")
        state = PersistentState(self, name, default, autosave)
        self._states.append(state)
        self.keeps_state = True
        self.autosaves = self.autosaves or autosave
        return state

    def timer(
        self,
        name: str,
        callback: Callable[..., Any],
        *,
        every: float | None = None,
        after: float | None = None,
        keep_alive: bool = False,
    ) -> Timer:
        """Run ``callback`` as a turn of the actor after ``after`` seconds (default:
        ``every``), then every ``every`` seconds, while this activation lives.

        A tick is a turn like a call's, never interleaved with one; ``callback`` takes
        no argument and may be ``async``. A tick that raises is logged and the timer
        goes on; a tick due while the previous one has not run yet is skipped. Ticks do
        not keep an idle actor in memory unless ``keep_alive``. A timer of the same
        name is replaced. Returns the timer: ``timer.cancel()`` stops it.

        Raises:
            ValueError: neither ``every`` nor ``after``, or one that is not positive.
        """
        if every is None and after is None:
            raise ValueError("a timer needs every= (seconds between ticks) or after=")
        for what, seconds in (("every", every), ("after", after)):
            if seconds is not None and not (seconds >= MIN_PERIOD and math.isfinite(seconds)):
                raise ValueError(f"{what} must be at least {MIN_PERIOD} s, not {seconds!r}")
        first = after if after is not None else every
        assert first is not None
        timer = Timer(name, callback, every=every, after=first, keep_alive=keep_alive)
        timers = self._timers
        if timers is None:
            timers = self._timers = []
        for old in timers:
            if old.name == name:
                old.cancel()
        timers[:] = [t for t in timers if t.name != name and not t.ended]
        timers.append(timer)
        if self._activation is not None:
            self._activation.arm(timer)
        return timer

    async def remind(
        self,
        name: str,
        *,
        after: float | None = None,
        every: float | None = None,
        at: float | None = None,
        data: Any = None,
    ) -> Reminder:
        """Create or replace the durable reminder ``name``: the actor's
        ``receive_reminder(reminder)`` is called when it falls due (``at`` seconds
        since the Unix epoch, or ``after`` seconds from now, or else ``every``), then
        every ``every`` seconds if given, wherever the actor lives then, activating it
        if need be, across collection, restarts and the loss of nodes, until
        :meth:`forget`. A checkpoint; once it returns, the reminder is stored.

        Raises:
            ValueError: no time, or a period under ``min_reminder_period``.
            TypeError: ``data`` is not JSON-able.
            StoreUnavailable: the store failed; nothing was stored.
        """
        service = self._service()
        if every is not None and not (every >= service.min_period and math.isfinite(every)):
            raise ValueError(
                f"every must be at least {service.min_period} s (min_reminder_period), not {every!r}"
            )
        now = service.clock()
        if at is not None:
            due = float(at)
            if not math.isfinite(due):
                raise ValueError(f"at must be seconds since the Unix epoch, not {at!r}")
        elif after is not None:
            if not (after >= 0 and math.isfinite(after)):
                raise ValueError(f"after must be a number of seconds from now, not {after!r}")
            due = now + after
        elif every is not None:
            due = now + every
        else:
            raise ValueError("a reminder needs at=, after= or every=")
        try:
            payload = codec.dumps(data)
        except TypeError:
            raise TypeError(
                f"data of reminder {name!r} cannot be stored as JSON:"
                f" {codec.why_not_json(data, 'data')}"
            ) from None
        store = await self._opener.get()
        row = await store.set_reminder(self.id, name, due=due, period=every, data=payload)
        service.schedule(row)
        return Reminder.of(row)

    async def forget(self, name: str) -> bool:
        """Remove the reminder ``name``; whether there was one. Once this returns, no
        tick of it starts anywhere. A checkpoint.

        Raises:
            StoreUnavailable: the store failed; the reminder may still fire.
        """
        service = self._service()
        store = await self._opener.get()
        forgotten = await store.forget_reminder(self.id, name)
        service.unschedule(self.id, name)
        return forgotten

    async def reminders(self) -> list[Reminder]:
        """The actor's reminders, by name, each with its next due time as
        ``scheduled_at``. A checkpoint."""
        self._service()
        store = await self._opener.get()
        return [Reminder.of(row) for row in await store.reminders(self.id)]

    def _service(self) -> ReminderService:
        if self._reminders is None:
            raise RuntimeError("reminders need a node's runtime")
        return self._reminders

    @property
    def timers(self) -> dict[str, Timer]:
        """The actor's timers that have not ended, by name."""
        return {t.name: t for t in self._timers or () if not t.ended}

    # What the activation does with it.

    def attach(self, activation: Activation) -> None:
        """The activation is in the table: arm the timers the factory asked for."""
        self._activation = activation
        for timer in self._timers or ():
            activation.arm(timer)

    def ended(self) -> None:
        """The activation has ended: its timers with it."""
        self._activation = None
        for timer in self._timers or ():
            timer.cancel()
        self._timers = None

    @property
    def trouble(self) -> TowtruckError | None:
        """Why this activation must be dropped now, or None."""
        return self._trouble

    async def claim(self) -> None:
        """Claim the actor and load its states. A checkpoint.

        Raises:
            StoreUnavailable: the store failed; nothing was claimed.
            TypeError: a state's default cannot be stored as JSON.
        """
        store = await self._opener.get()
        claim = await store.claim(self.id)
        for state in self._states:
            stored = claim.states.get(state.name)
            state._load(stored)
        self.epoch = claim.epoch

    async def turn_ended(self) -> None:
        """Save the autosaved states that changed. A checkpoint if any did.

        Raises:
            StateConflict, StoreUnavailable: see :meth:`PersistentState.write`.
            TypeError: an autosaved value is no longer JSON-able.

        On any of these, call :meth:`turn_failed`. States are written one by one: those
        written before a failure stay written.
        """
        for state in self._states:
            if state.autosave:
                data = state._encode()
                if data != state._stored:
                    await state._save(data)

    def turn_failed(self) -> None:
        """Put back the stored values of the autosaved states after a turn that raised
        (what the store holds: no round trip, as no other activation may have written)."""
        for state in self._states:
            if state.autosave:
                state._restore()

    def _fail(self, error: TowtruckError) -> None:
        if self._trouble is None:
            self._trouble = error

    def _store(self) -> Store:
        if self._trouble is not None:
            raise self._trouble
        store = self._opener.opened
        if not self.epoch or store is None:
            raise RuntimeError(
                f"actor {self.id!r}: persistent state is loaded after create_actor returns;"
                " read or write it from activate() or a method"
            )
        return store


class PersistentState:
    """One named state of an actor, kept in the store (see :meth:`ActorContext.persistent`).

    Attributes:
        name: Its name among the actor's states.
        value: The value: change it in place or assign it, then :meth:`write`.
        etag: What the store holds now, by version; None while nothing is stored.
        autosave: Written at the end of every turn that changed it.
    """

    __slots__ = ("_context", "_default", "_stored", "autosave", "etag", "name", "value")

    def __init__(self, context: ActorContext, name: str, default: Any, autosave: bool) -> None:
        self._context = context
        self.name = name
        self.autosave = autosave
        self._default = default
        self.value: Any = self._fresh()
        self.etag: str | None = None
        self._stored: bytes | None = None  # what the store holds (the default's JSON if none)

    def __repr__(self) -> str:
        return f"<PersistentState {self._context.id!r}/{self.name!r} etag={self.etag!r}>"

    @property
    def exists(self) -> bool:
        """Something is stored (it was written, and not cleared since)."""
        return self.etag is not None

    async def write(self) -> None:
        """Store :attr:`value`; once this returns, it is durable. A checkpoint.

        Raises:
            TypeError: the value is not JSON-able (nothing is stored; the message says
                which part, and what to use instead).
            StateConflict: a newer activation has claimed the actor: nothing was stored,
                and this activation is dropped when the turn ends.
            StoreUnavailable: the store failed: nothing was stored, and :attr:`value`
                is put back to what the store holds.
            CallInterrupted: the store had it and did not answer in time: it may land
                yet; this activation is dropped when the turn ends.
        """
        await self._save(self._encode())

    async def read(self) -> None:
        """Load the value the store holds now (dropping changes not written).

        Raises:
            StateConflict: a newer activation has claimed the actor.
            StoreUnavailable: the store failed; the value is unchanged.
        """
        context = self._context
        found = await context._store().read(context.id)
        if found.epoch != context.epoch:
            error = StateConflict(
                f"actor {context.id!r} was claimed by a newer activation (epoch"
                f" {found.epoch}, this one {context.epoch}); this one is dropped",
                actor=context.id,
                state=self.name,
                epoch=context.epoch,
            )
            context._fail(error)
            raise error
        stored = found.states.get(self.name)
        self._load(stored)

    async def clear(self) -> None:
        """Remove the state from the store; :attr:`value` becomes the default again.

        Raises:
            StateConflict, StoreUnavailable: as :meth:`write`.
        """
        context = self._context
        store = context._store()
        await self._guarded(store.clear(context.id, self.name, epoch=context.epoch, etag=self.etag))
        self.etag = None
        self.value = self._fresh()
        self._stored = codec.dumps(self.value)

    # Inside towtruck.

    def _fresh(self) -> Any:
        default = self._default
        return default() if callable(default) else copy.deepcopy(default)

    def _encode(self) -> bytes:
        try:
            return codec.dumps(self.value)
        except TypeError:
            name = f"state {self.name!r} of actor {self._context.id!r}"
            raise TypeError(
                f"{name} cannot be stored as JSON: {codec.why_not_json(self.value, 'value')}"
            ) from None

    def _load(self, stored: Stored | None) -> None:
        if stored is None:
            self.etag, self.value = None, self._fresh()
            self._stored = self._encode()
        else:
            self.etag, self.value, self._stored = (
                stored.etag,
                codec.loads(stored.value),
                stored.value,
            )

    def _restore(self) -> None:
        self.value = self._fresh() if self._stored is None else codec.loads(self._stored)

    async def _save(self, data: bytes) -> None:
        context = self._context
        store = context._store()
        try:
            etag = await store.write(
                context.id, self.name, data, epoch=context.epoch, etag=self.etag
            )
        except BaseException as exc:
            self._failed(exc)
            raise
        self.etag, self._stored = etag, data

    async def _guarded(self, operation: Awaitable[Any]) -> Any:
        """Run a store operation; note what its failure means for the activation."""
        try:
            return await operation
        except BaseException as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: BaseException) -> None:
        """Note what a store operation's failure means for the activation."""
        if isinstance(exc, StateConflict):
            self._context._fail(exc)
        elif isinstance(exc, StoreUnavailable):
            self._restore()
        elif isinstance(exc, (trio.Cancelled, CallInterrupted)):
            # It may have landed or not (or may yet): only a fresh claim knows.
            self._context._fail(
                StoreUnavailable(
                    f"a write of actor {self._context.id!r} was cut off; the next call"
                    " reloads its state",
                    actor=self._context.id,
                )
            )


def takes_context(factory: Callable[..., object]) -> bool:
    """Whether ``create_actor`` takes a third parameter, the :class:`ActorContext`."""
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    return len(positional) >= 3 or (variadic and len(positional) < 3)
