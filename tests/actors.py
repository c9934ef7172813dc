"""Actors the tests use (importable by child processes as ``tests.actors``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


class StoredCounter:
    """A counter that loads its count when activated and saves it when deactivated, in
    a file per actor under $STORE_DIR: what an application does with its database, so
    that an actor moving between nodes (a graceful shutdown) keeps its state."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id
        self.count = 0
        self.path = Path(os.environ["STORE_DIR"]) / quote(id, safe="")

    async def activate(self) -> None:
        if self.path.exists():
            self.count = int(self.path.read_text())
        self._journal("loaded")

    async def increment(self, data: Any) -> int:
        self.count += 1
        return self.count

    def get(self, data: Any) -> int:
        return self.count

    async def deactivate(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(str(self.count))
        partial.replace(self.path)
        self._journal("saved")

    def _journal(self, event: str) -> None:
        """A line in $STORE_DIR/journal, for a failing test to tell what happened."""
        line = f"{time.time():.3f} pid {os.getpid()} {event} {self.id} {self.count}\n"
        with open(self.path.parent / "journal", "a") as journal:
            journal.write(line)


def create_stored_counter(id: str, client: towtruck.Client) -> StoredCounter:
    return StoredCounter(id, client)


class LedgerCounter:
    """A counter kept in the state store: each increment names its operation, and the
    stored state keeps the operations applied, so a test can tell exactly which
    increments landed (and that none landed twice)."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.state = context.persistent(default=lambda: {"count": 0, "ops": []})

    async def increment(self, data: Any) -> int:
        value = self.state.value
        value["count"] += 1
        value["ops"].append(data[0])  # GET .../increment/{op}
        await self.state.write()
        return int(value["count"])


def create_ledger_counter(
    id: str, client: towtruck.Client, context: towtruck.ActorContext
) -> LedgerCounter:
    return LedgerCounter(id, client, context)


class Blocker:
    """Blocks the event loop, as actor code calling blocking functions does."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id

    def nap(self, data: Any) -> str:
        time.sleep(float(data[0]))
        return "napped"

    def spin(self, data: Any) -> None:
        while True:
            pass

    def told_nap(self, data: Any) -> str:
        """``nap``, saying so on stdout first (for a test to stop the process then)."""
        print(f"napping {self.id}", flush=True)
        time.sleep(float(data[0]))
        return "napped"


def create_blocker(id: str, client: towtruck.Client) -> Blocker:
    return Blocker(id, client)


async def create_async_counter(id: str, client: towtruck.Client) -> Counter:
    """A common mistake: ``create_actor`` must be a plain def."""
    return Counter(id, client)


class SlowStarter:
    """Blocks the event loop in ``activate`` for 1.5 s."""

    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id

    def activate(self) -> None:
        time.sleep(1.5)

    def ready(self) -> str:
        return "ready"


def create_slow_starter(id: str, client: towtruck.Client) -> SlowStarter:
    return SlowStarter(id, client)


def create_slowly(id: str, client: towtruck.Client) -> Blocker:
    """A ``create_actor`` that blocks the event loop for 1.5 s."""
    time.sleep(1.5)
    return Blocker(id, client)
