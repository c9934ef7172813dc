"""What every state store does, and the values that pass through it.

A store keeps, for each actor id, an **epoch** (how many times the actor has been
claimed) and its named **states**, each a JSON document with an **etag** that changes
on every write. Activating an actor with persistent state *claims* it: one atomic step
bumps the epoch and returns the states. Every write and clear names the epoch and the
etag it expects; the store applies it only if both are still current, atomically, and
refuses it with :class:`~towtruck.errors.StateConflict` otherwise. So once a newer
activation has claimed, no write from an older one can land, whatever it read before:
that is the fence.

It also keeps actors' durable **reminders** (:class:`ReminderRow`), in
:data:`BUCKETS` buckets by a hash of the actor's id, so that each node of a cluster
loads only the due reminders of its own buckets.

Backends subclass :class:`Store` and implement the underscored methods; the public
ones turn the backend's own failures (``failures``) into
:class:`~towtruck.errors.StoreUnavailable`: nothing was written. Each backend bounds
its own waits by ``timeout`` (a lock, a connection, a statement), and an operation
that reached the store is never abandoned half-way: a cancelled write either
committed or did not. Where a backend cannot tell which (the store had the write and
did not answer in time), it raises ``uncertain``, and a write or clear fails with
:class:`~towtruck.errors.CallInterrupted` instead: it may land yet.
"""

from __future__ import annotations

import abc
import dataclasses
import secrets
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import ClassVar, Final

from ..errors import CallInterrupted, StateConflict, StoreUnavailable
from ..figures import StoreFigures

__all__ = [
    "BUCKETS",
    "DEFAULT_TIMEOUT",
    "Claim",
    "OutcomeUnknown",
    "ReminderRow",
    "Store",
    "Stored",
    "bucket_of",
    "conflict",
]

#: How long one store operation may take by default, in seconds.
DEFAULT_TIMEOUT: Final = 5.0
#: Reminders are kept in this many buckets, by a hash of their actor's id; each node
#: of a cluster loads the due reminders of the buckets placement gives it.
BUCKETS: Final = 256


def bucket_of(actor_id: str) -> int:
    """The bucket of an actor's reminders (the same in every process)."""
    return zlib.crc32(actor_id.encode("utf-8", "surrogatepass")) % BUCKETS


class OutcomeUnknown(Exception):
    """Raised by a backend when the store had an operation and did not say whether it
    applied it (see the module)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Stored:
    """One named state as the store holds it.

    Attributes:
        etag: Changes on every write; a write names the etag it replaces.
        value: The state's JSON document.
    """

    etag: str
    value: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """An actor's epoch and states, as a claim (or a read) found them.

    Attributes:
        epoch: The actor's epoch: 0 if it was never claimed.
        states: Its states by name (those never written, or cleared, are absent).
    """

    epoch: int
    states: Mapping[str, Stored]


@dataclasses.dataclass(frozen=True, slots=True)
class ReminderRow:
    """A durable reminder as the store holds it.

    Attributes:
        actor: The actor it reminds.
        name: Its name among the actor's reminders.
        due: When it is due next, in seconds since the Unix epoch.
        period: Seconds between ticks; None for a reminder that fires once.
        data: JSON handed to the actor with each tick.
        generation: Drawn anew each time the reminder is set, so a tick of a reminder
            replaced (or forgotten and set again) is never taken for one of the new.
    """

    actor: str
    name: str
    due: float
    period: float | None
    data: bytes
    generation: int

    @property
    def tick_id(self) -> str:
        """The same for every delivery of one tick, different for every tick."""
        return f"{self.generation:x}-{round(self.due * 1000)}"

    @property
    def bucket(self) -> int:
        return bucket_of(self.actor)


def conflict(actor_id: str, name: str, epoch: int, why: str) -> StateConflict:
    """The error for a write or clear the store refused (``why`` says what moved)."""
    return StateConflict(
        f"state {name!r} of actor {actor_id!r} was not written: {why}; a newer activation"
        " has claimed the actor, and this one is dropped (retry the call)",
        actor=actor_id,
        state=name,
        epoch=epoch,
    )


class Store(abc.ABC):
    """A place where actors' states are kept, fenced by epoch (see the module).

    Args:
        timeout: Seconds any one operation may take before it fails with
            :class:`~towtruck.errors.StoreUnavailable`.
    """

    #: The backend's exceptions that mean "the store failed" (not a conflict).
    failures: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    #: The backend's exceptions that mean "the store may have done it, or may yet".
    uncertain: ClassVar[tuple[type[BaseException], ...]] = (OutcomeUnknown,)
    #: How the store names itself in errors and logs (a URL without its password).
    url: str = ""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        #: Latency, conflicts and failures of the actors' operations, for ``/metrics``.
        self.figures = StoreFigures()

    async def claim(self, actor_id: str) -> Claim:
        """Claim the actor for a new activation: bump its epoch and return it with the
        actor's states, in one atomic step. A checkpoint."""
        with self.figures.timing("claim", time.perf_counter):
            try:
                return await self._claim(actor_id)
            except self.failures as exc:
                raise self._unavailable("claim", actor_id, exc) from exc

    async def read(self, actor_id: str) -> Claim:
        """The actor's epoch and states now, claiming nothing. A checkpoint."""
        with self.figures.timing("read", time.perf_counter):
            try:
                return await self._read(actor_id)
            except self.failures as exc:
                raise self._unavailable("read", actor_id, exc) from exc

    async def write(
        self, actor_id: str, name: str, value: bytes, *, epoch: int, etag: str | None
    ) -> str:
        """Store ``value`` as the state ``name`` if the actor's epoch is still ``epoch``
        and the state's etag still ``etag`` (None: the state must not exist). Returns
        the new etag. A checkpoint.

        Raises:
            StateConflict: the epoch or the etag has moved on; nothing was written.
            StoreUnavailable: the store failed; nothing was written.
            CallInterrupted: the store had it but did not answer: it may land yet.
        """
        with self.figures.timing("write", time.perf_counter):
            try:
                return await self._write(actor_id, name, value, epoch, etag)
            except self.uncertain as exc:
                raise self._interrupted("write", actor_id, exc) from exc
            except self.failures as exc:
                raise self._unavailable("write", actor_id, exc) from exc

    async def clear(self, actor_id: str, name: str, *, epoch: int, etag: str | None) -> None:
        """Remove the state ``name``, on the same conditions as :meth:`write` (with
        ``etag`` None there is nothing to remove, but the epoch is still checked).

        Raises:
            StateConflict: the epoch or the etag has moved on; nothing was removed.
            StoreUnavailable: the store failed; nothing was removed.
        """
        with self.figures.timing("clear", time.perf_counter):
            try:
                await self._clear(actor_id, name, epoch, etag)
            except self.uncertain as exc:
                raise self._interrupted("clear", actor_id, exc) from exc
            except self.failures as exc:
                raise self._unavailable("clear", actor_id, exc) from exc

    async def ids(self, after: str | None = None, limit: int = 100) -> list[str]:
        """Up to ``limit`` ids of claimed actors, in order, from just past ``after``
        (the last id of the previous page: a cursor). A checkpoint."""
        try:
            return await self._ids(after, limit)
        except self.failures as exc:
            raise self._unavailable("list", "", exc) from exc

    async def set_reminder(
        self, actor_id: str, name: str, *, due: float, period: float | None, data: bytes
    ) -> ReminderRow:
        """Create or replace the reminder ``name`` of an actor (a new generation)."""
        row = ReminderRow(actor_id, name, due, period, data, secrets.randbits(48))
        try:
            await self._set_reminder(row)
        except self.failures as exc:
            raise self._unavailable("set a reminder", actor_id, exc) from exc
        return row

    async def forget_reminder(self, actor_id: str, name: str) -> bool:
        """Remove a reminder; whether there was one. Once this returns, no tick of it
        is taken by :meth:`reminder_done` or found by :meth:`reminder`."""
        try:
            return await self._forget_reminder(actor_id, name)
        except self.failures as exc:
            raise self._unavailable("forget a reminder", actor_id, exc) from exc

    async def reminders(self, actor_id: str) -> list[ReminderRow]:
        """An actor's reminders, by name."""
        try:
            return sorted(await self._reminders(actor_id), key=lambda row: row.name)
        except self.failures as exc:
            raise self._unavailable("list reminders", actor_id, exc) from exc

    async def reminder(self, actor_id: str, name: str) -> ReminderRow | None:
        """One reminder of an actor, or None."""
        try:
            return await self._reminder(actor_id, name)
        except self.failures as exc:
            raise self._unavailable("read a reminder", actor_id, exc) from exc

    async def due_reminders(
        self, buckets: Sequence[int], before: float, limit: int
    ) -> list[ReminderRow]:
        """Up to ``limit`` reminders of ``buckets`` due before ``before``, soonest first."""
        try:
            rows = await self._due_reminders(sorted(set(buckets)), before, limit)
        except self.failures as exc:
            raise self._unavailable("find due reminders", "", exc) from exc
        return sorted(rows, key=lambda row: row.due)[:limit]

    async def reminder_done(
        self, actor_id: str, name: str, *, generation: int, due: float, next_due: float | None
    ) -> bool:
        """Mark the tick due at ``due`` delivered: the reminder is due next at
        ``next_due`` (None: removed), if it is still of ``generation`` and due at
        ``due``; False (and nothing changed) if not: it was replaced, forgotten, or
        that tick was marked already."""
        try:
            return await self._reminder_done(actor_id, name, generation, due, next_due)
        except self.failures as exc:
            raise self._unavailable("mark a reminder done", actor_id, exc) from exc

    async def aclose(self) -> None:  # noqa: B027 (most backends have something to close)
        """Close connections and threads. The store is not used afterwards."""

    @abc.abstractmethod
    async def _claim(self, actor_id: str) -> Claim: ...

    @abc.abstractmethod
    async def _read(self, actor_id: str) -> Claim: ...

    @abc.abstractmethod
    async def _write(
        self, actor_id: str, name: str, value: bytes, epoch: int, etag: str | None
    ) -> str: ...

    @abc.abstractmethod
    async def _clear(self, actor_id: str, name: str, epoch: int, etag: str | None) -> None: ...

    @abc.abstractmethod
    async def _ids(self, after: str | None, limit: int) -> list[str]: ...

    @abc.abstractmethod
    async def _set_reminder(self, row: ReminderRow) -> None: ...

    @abc.abstractmethod
    async def _forget_reminder(self, actor_id: str, name: str) -> bool: ...

    @abc.abstractmethod
    async def _reminders(self, actor_id: str) -> list[ReminderRow]: ...

    @abc.abstractmethod
    async def _reminder(self, actor_id: str, name: str) -> ReminderRow | None: ...

    @abc.abstractmethod
    async def _due_reminders(
        self, buckets: list[int], before: float, limit: int
    ) -> list[ReminderRow]: ...

    @abc.abstractmethod
    async def _reminder_done(
        self, actor_id: str, name: str, generation: int, due: float, next_due: float | None
    ) -> bool: ...

    def _interrupted(self, operation: str, actor_id: str, exc: BaseException) -> CallInterrupted:
        return CallInterrupted(
            f"the state store {self.url} did not answer a {operation} for actor"
            f" {actor_id!r} in time ({type(exc).__name__}): it may have been applied, or"
            " may yet be; the actor's next call reloads its state",
            actor=actor_id,
            store=self.url,
        )

    def _unavailable(self, operation: str, actor_id: str, exc: BaseException) -> StoreUnavailable:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return StoreUnavailable(
            f"the state store {self.url} failed to {operation}"
            + (f" for actor {actor_id!r}" if actor_id else "")
            + f" ({what}); nothing was changed",
            actor=actor_id,
            store=self.url,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
