"""What every state store does, and the values that pass through it.

A store keeps, for each actor id, an **epoch** (how many times the actor has been
claimed) and its named **states**, each a JSON document with an **etag** that changes
on every write. Activating an actor with persistent state *claims* it: one atomic step
bumps the epoch and returns the states. Every write and clear names the epoch and the
etag it expects; the store applies it only if both are still current, atomically, and
refuses it with :class:`~towtruck.errors.StateConflict` otherwise. So once a newer
activation has claimed, no write from an older one can land, whatever it read before:
that is the fence.

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
from collections.abc import Mapping
from typing import ClassVar, Final

from ..errors import CallInterrupted, StateConflict, StoreUnavailable

__all__ = ["DEFAULT_TIMEOUT", "Claim", "OutcomeUnknown", "Store", "Stored", "conflict"]

#: How long one store operation may take by default, in seconds.
DEFAULT_TIMEOUT: Final = 5.0


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

    async def claim(self, actor_id: str) -> Claim:
        """Claim the actor for a new activation: bump its epoch and return it with the
        actor's states, in one atomic step. A checkpoint."""
        try:
            return await self._claim(actor_id)
        except self.failures as exc:
            raise self._unavailable("claim", actor_id, exc) from exc

    async def read(self, actor_id: str) -> Claim:
        """The actor's epoch and states now, claiming nothing. A checkpoint."""
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
