"""A membership table in this process's memory: for tests and simulations, shared by
every node of the process that opens the same ``memory://name``."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Final

import trio

from .base import MembershipTable, Row, Status, Table

__all__ = ["MemoryTable", "memory_table"]

_SHARED: Final[weakref.WeakValueDictionary[str, MemoryTable]] = weakref.WeakValueDictionary()


def memory_table(name: str, *, timeout: float | None = None) -> MemoryTable:
    """The memory table called ``name``, shared in the process while anything holds it."""
    table = _SHARED.get(name)
    if table is None:
        table = MemoryTable() if timeout is None else MemoryTable(timeout=timeout)
        table.url = f"memory://{name}"
        _SHARED[name] = table
    return table


class MemoryTable(MembershipTable):
    """Rows in a dict, changed one step at a time (no checkpoint inside a change)."""

    def __init__(self, **options: float) -> None:
        super().__init__(**options)
        self._rows: dict[tuple[str, int], Row] = {}
        self._version = 0
        #: Set to make every operation fail as a table that is down would (tests).
        self.down = False

    async def _step(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise ConnectionRefusedError("the memory table is marked down")

    async def _read(self) -> Table:
        await self._step()
        return Table(self._version, tuple(self._rows.values()))

    async def _join(self, address: str, generation: int, now: float) -> None:
        await self._step()
        for key, row in list(self._rows.items()):
            if (
                row.address == address
                and row.generation < generation
                and row.status is not Status.DEAD
            ):
                self._rows[key] = dataclasses.replace(row, status=Status.DEAD, changed=now)
        self._rows[address, generation] = Row(address, generation, Status.JOINING, now, {}, now)
        self._version += 1

    async def _set_status(self, address: str, generation: int, status: Status, now: float) -> bool:
        await self._step()
        row = self._rows.get((address, generation))
        if row is None or row.status is Status.DEAD:
            return False
        self._rows[address, generation] = dataclasses.replace(row, status=status, changed=now)
        self._version += 1
        return True

    async def _alive(self, address: str, generation: int, now: float) -> None:
        await self._step()
        row = self._rows.get((address, generation))
        if row is not None:
            self._rows[address, generation] = dataclasses.replace(row, alive=now)

    async def _vote(self, address: str, generation: int, voter: str, now: float) -> Row | None:
        await self._step()
        row = self._rows.get((address, generation))
        if row is None:
            return None
        row = dataclasses.replace(row, votes={**row.votes, voter: now})
        self._rows[address, generation] = row
        return row

    async def _declare_dead(self, address: str, generation: int, version: int, now: float) -> bool:
        await self._step()
        row = self._rows.get((address, generation))
        if row is None or row.status is Status.DEAD or self._version != version:
            return False
        self._rows[address, generation] = dataclasses.replace(row, status=Status.DEAD, changed=now)
        self._version += 1
        return True
