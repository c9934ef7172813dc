"""Actors the tests use (importable by child processes as ``tests.actors``)."""

from __future__ import annotations

from typing import Any

import trio
import trio.lowlevel

import towtruck

#: What every Recorder saw, in order, for assertions: (actor id, event).
EVENTS: list[tuple[str, str]] = []


class Counter:
    """A read-modify-write counter that awaits between the read and the write, so two
    interleaved turns would lose an update."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id
        self.count = 0

    async def increment(self, data: Any) -> int:
        value = self.count
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        self.count = value + 1
        return self.count

    def get(self, data: Any) -> int:
        return self.count


class Recorder:
    """Records its lifecycle in EVENTS; its methods exercise every way of calling."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id
        self.client = client
        self.secret = "internal"
        self.activated = False

    async def activate(self) -> None:
        EVENTS.append((self.id, "activate"))
        await trio.sleep(0.01)
        self.activated = True

    async def deactivate(self) -> None:
        EVENTS.append((self.id, "deactivate"))

    async def echo(self, data: Any) -> Any:
        return {"data": data, "activated": self.activated}

    def plain(self, data: Any) -> str:
        return f"plain {data!r}"

    async def no_data(self) -> str:
        return "no data"

    @staticmethod
    def static(data: Any) -> str:
        return "static"

    async def fail(self, data: Any) -> None:
        raise ValueError(f"bad value {data!r}")

    async def sleep(self, data: Any) -> str:
        await trio.sleep(float(data[0]) if isinstance(data, list) else float(data))
        return "slept"

    async def call(self, data: Any) -> Any:
        target, method, *rest = data
        return await self.client.invoke(target, method, rest)

    async def not_json(self, data: Any) -> object:
        return object()

    def _private(self, data: Any) -> str:
        return "private"

    @property
    def prop(self) -> str:
        return "property"


def create_counter(id: str, client: towtruck.Client) -> Counter:
    return Counter(id, client)


def create_recorder(id: str, client: towtruck.Client) -> Recorder:
    return Recorder(id, client)


def create_fuzzed(id: str, client: towtruck.Client) -> dict[str, Any]:
    """An actor for the fuzz test: every method is quick, whatever its data."""

    def echo(data: Any) -> Any:
        return data

    def boom(data: Any) -> None:
        raise ValueError("boom")

    return {"echo": echo, "boom": boom}
