"""A store in this process's memory: for tests, ``open_runtime`` and ``cluster()``.

``memory:`` is a store of its own for each node that opens it; ``memory://name`` is
shared by every node of the process that opens the same name (``cluster()`` gives its
nodes one), so fencing between nodes can be tested in one process. Nothing survives
the process.
"""

from __future__ import annotations

import bisect
import dataclasses
import weakref
from typing import Final

import trio

from .base import Claim, ReminderRow, Store, Stored, conflict

__all__ = ["MemoryStore", "memory_store"]

_SHARED: Final[weakref.WeakValueDictionary[str, MemoryStore]] = weakref.WeakValueDictionary()


def memory_store(name: str = "", *, timeout: float | None = None) -> MemoryStore:
    """The memory store called ``name`` (shared in the process while anything holds
    it), or a new one of its own when ``name`` is empty."""
    if not name:
        return MemoryStore() if timeout is None else MemoryStore(timeout=timeout)
    store = _SHARED.get(name)
    if store is None:
        store = _SHARED[name] = MemoryStore() if timeout is None else MemoryStore(timeout=timeout)
        store.url = f"memory://{name}"
    return store


class MemoryStore(Store):
    """Actors' states in a dict, with the same fencing as every store."""

    url = "memory:"

    def __init__(self, **options: float) -> None:
        super().__init__(**options)
        self._epochs: dict[str, int] = {}
        self._states: dict[str, dict[str, tuple[int, bytes]]] = {}
        self._sorted: list[str] = []  # sorted, for paging
        self._reminders_by_actor: dict[str, dict[str, ReminderRow]] = {}
        #: Set to make every operation fail as a store that is down would (tests).
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("the memory store is marked down")

    async def _claim(self, actor_id: str) -> Claim:
        await trio.lowlevel.checkpoint()
        self._check()
        epoch = self._epochs.get(actor_id, 0) + 1
        if epoch == 1:
            bisect.insort(self._sorted, actor_id)
        self._epochs[actor_id] = epoch
        return self._found(actor_id, epoch)

    async def _read(self, actor_id: str) -> Claim:
        await trio.lowlevel.checkpoint()
        self._check()
        return self._found(actor_id, self._epochs.get(actor_id, 0))

    def _found(self, actor_id: str, epoch: int) -> Claim:
        states = self._states.get(actor_id, {})
        return Claim(epoch, {n: Stored(str(v), value) for n, (v, value) in states.items()})

    async def _write(
        self, actor_id: str, name: str, value: bytes, epoch: int, etag: str | None
    ) -> str:
        await trio.lowlevel.checkpoint()
        self._check()
        version = self._fence(actor_id, name, epoch, etag) + 1
        self._states.setdefault(actor_id, {})[name] = (version, value)
        return str(version)

    async def _clear(self, actor_id: str, name: str, epoch: int, etag: str | None) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        self._fence(actor_id, name, epoch, etag)
        states = self._states.get(actor_id)
        if states is not None:
            states.pop(name, None)

    def _fence(self, actor_id: str, name: str, epoch: int, etag: str | None) -> int:
        """The state's version, if ``epoch`` and ``etag`` are current."""
        current = self._epochs.get(actor_id, 0)
        if current != epoch:
            raise conflict(actor_id, name, epoch, f"the actor's epoch is {current}, not {epoch}")
        found = self._states.get(actor_id, {}).get(name)
        version = 0 if found is None else found[0]
        if (str(version) if found else None) != etag:
            raise conflict(actor_id, name, epoch, f"its etag is not {etag!r}")
        return version

    async def _ids(self, after: str | None, limit: int) -> list[str]:
        await trio.lowlevel.checkpoint()
        self._check()
        start = 0 if after is None else bisect.bisect_right(self._sorted, after)
        return self._sorted[start : start + limit]

    async def _set_reminder(self, row: ReminderRow) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        self._reminders_by_actor.setdefault(row.actor, {})[row.name] = row

    async def _forget_reminder(self, actor_id: str, name: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._check()
        return self._reminders_by_actor.get(actor_id, {}).pop(name, None) is not None

    async def _reminders(self, actor_id: str) -> list[ReminderRow]:
        await trio.lowlevel.checkpoint()
        self._check()
        return list(self._reminders_by_actor.get(actor_id, {}).values())

    async def _reminder(self, actor_id: str, name: str) -> ReminderRow | None:
        await trio.lowlevel.checkpoint()
        self._check()
        return self._reminders_by_actor.get(actor_id, {}).get(name)

    async def _due_reminders(
        self, buckets: list[int], before: float, limit: int
    ) -> list[ReminderRow]:
        await trio.lowlevel.checkpoint()
        self._check()
        wanted = set(buckets)
        due = [
            row
            for rows in self._reminders_by_actor.values()
            for row in rows.values()
            if row.due < before and row.bucket in wanted
        ]
        return sorted(due, key=lambda row: row.due)[:limit]

    async def _reminder_done(
        self, actor_id: str, name: str, generation: int, due: float, next_due: float | None
    ) -> bool:
        await trio.lowlevel.checkpoint()
        self._check()
        rows = self._reminders_by_actor.get(actor_id, {})
        row = rows.get(name)
        if row is None or row.generation != generation or row.due != due:
            return False
        if next_due is None:
            del rows[name]
        else:
            rows[name] = dataclasses.replace(row, due=next_due)
        return True
