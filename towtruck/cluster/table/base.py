"""The membership table: the cluster's decisions kept in a store the team already runs.

Modelled on Orleans' membership table. One row per node *generation* (a restarted node
is a new generation at the same address), with its status, the time it last said it
was alive, and the death votes its peers cast against it. A table version moves on
with every change of status, and a death is declared by one conditional update on
that version, so however many nodes vote, exactly one declares it::

    joining --serves, view settled--> active --graceful stop--> leaving
        \\------------------- enough fresh votes --------------------> dead

Heartbeats and lanes stay between the nodes (:mod:`towtruck.cluster.gossip`); the
table holds only the decisions, which an operator can read as the cluster's history:
rows are never deleted, only marked. :mod:`towtruck.cluster.registrar` keeps a node's
row and view in step with it.

Backends implement the ``_``-prefixed operations; the public ones turn a backend's
failure into :class:`~towtruck.errors.StoreUnavailable` and bound each with the
table's timeout.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, TypeVar

import trio

from ...errors import StoreUnavailable

__all__ = ["DEFAULT_TIMEOUT", "MembershipTable", "Row", "Status", "Table"]

DEFAULT_TIMEOUT: Final = 5.0

T = TypeVar("T")


class Status(enum.Enum):
    """Where a node generation is in its life (see the module's diagram)."""

    JOINING = "joining"
    ACTIVE = "active"
    LEAVING = "leaving"
    DEAD = "dead"


@dataclasses.dataclass(frozen=True)
class Row:
    """One node generation.

    Attributes:
        address: The ``host:port`` it advertises.
        generation: When it started (ns since the Unix epoch): unique per start.
        status: See :class:`Status`.
        alive: When it last said it was alive (s since the Unix epoch).
        votes: Who voted it dead, and when (s since the Unix epoch), by voter address.
        changed: When its status last changed (s since the Unix epoch).
    """

    address: str
    generation: int
    status: Status
    alive: float
    votes: dict[str, float] = dataclasses.field(default_factory=dict)
    changed: float = 0.0

    def fresh_votes(self, now: float, window: float) -> int:
        """Votes cast within ``window`` seconds of ``now``."""
        return sum(1 for when in self.votes.values() if now - when <= window)

    def to_payload(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "generation": self.generation,
            "status": self.status.value,
            "alive": self.alive,
            "votes": dict(self.votes),
            "changed": self.changed,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Row:
        return cls(
            str(payload["address"]),
            int(payload["generation"]),
            Status(payload["status"]),
            float(payload["alive"]),
            {str(k): float(v) for k, v in (payload.get("votes") or {}).items()},
            float(payload.get("changed", 0.0)),
        )


@dataclasses.dataclass(frozen=True)
class Table:
    """The whole table at one moment: its version and every row."""

    version: int
    rows: tuple[Row, ...]

    def latest(self) -> dict[str, Row]:
        """The newest generation of each address."""
        found: dict[str, Row] = {}
        for row in self.rows:
            known = found.get(row.address)
            if known is None or row.generation > known.generation:
                found[row.address] = row
        return found

    def row(self, address: str, generation: int) -> Row | None:
        return next(
            (r for r in self.rows if r.address == address and r.generation == generation), None
        )


class MembershipTable(abc.ABC):
    """Where a cluster keeps its membership decisions (see the module).

    Args:
        timeout: Seconds any one operation may take before it fails with
            :class:`~towtruck.errors.StoreUnavailable`.
    """

    #: The backend's exceptions that mean "the table failed".
    failures: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    #: How the table names itself in errors and logs (a URL without its password).
    url: str = ""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout

    async def read(self) -> Table:
        """The table now. A checkpoint."""
        return await self._guard("read", self._read)

    async def join(self, address: str, generation: int, now: float) -> None:
        """Write this node's row, ``joining``; older generations of its address that are
        not dead become dead (they are gone: this address started again). Moves the
        version on. A checkpoint."""
        await self._guard("join", lambda: self._join(address, generation, now))

    async def set_status(self, address: str, generation: int, status: Status, now: float) -> bool:
        """Move a row to ``status`` (``active``, ``leaving``) unless it is dead; whether
        it moved. Moves the version on. A checkpoint."""
        return await self._guard(
            "set_status", lambda: self._set_status(address, generation, status, now)
        )

    async def alive(self, address: str, generation: int, now: float) -> None:
        """Say that this generation is alive at ``now`` (the version stays). A checkpoint."""
        await self._guard("alive", lambda: self._alive(address, generation, now))

    async def vote(self, address: str, generation: int, voter: str, now: float) -> Row | None:
        """Cast (or renew) ``voter``'s vote that the generation is dead; the row after
        it, or None if there is no such row (the version stays). A checkpoint."""
        return await self._guard("vote", lambda: self._vote(address, generation, voter, now))

    async def declare_dead(self, address: str, generation: int, version: int, now: float) -> bool:
        """Mark the generation dead if the table's version is still ``version`` (one
        conditional update: of the voters who try with the same version, one succeeds);
        whether this call did it. Moves the version on. A checkpoint."""
        return await self._guard(
            "declare_dead", lambda: self._declare_dead(address, generation, version, now)
        )

    async def aclose(self) -> None:  # noqa: B027 (most backends have something to close)
        """Let go of connections."""

    async def _guard(self, operation: str, run: Callable[[], Awaitable[T]]) -> T:
        try:
            with trio.fail_after(self.timeout):
                return await run()
        except trio.TooSlowError as exc:
            raise self._unavailable(operation, exc) from exc
        except self.failures as exc:
            raise self._unavailable(operation, exc) from exc

    def _unavailable(self, operation: str, exc: BaseException) -> StoreUnavailable:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return StoreUnavailable(
            f"the membership table {self.url} failed to {operation} ({what})", store=self.url
        )

    @abc.abstractmethod
    async def _read(self) -> Table: ...

    @abc.abstractmethod
    async def _join(self, address: str, generation: int, now: float) -> None: ...

    @abc.abstractmethod
    async def _set_status(
        self, address: str, generation: int, status: Status, now: float
    ) -> bool: ...

    @abc.abstractmethod
    async def _alive(self, address: str, generation: int, now: float) -> None: ...

    @abc.abstractmethod
    async def _vote(self, address: str, generation: int, voter: str, now: float) -> Row | None: ...

    @abc.abstractmethod
    async def _declare_dead(
        self, address: str, generation: int, version: int, now: float
    ) -> bool: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
