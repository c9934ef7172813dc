"""Durable reminders on trio's autojump clock (the reminders' wall clock follows it):
ticks as turns, on their beat, once each, after collection and restarts, one tick for
an outage, nothing after forget."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import towtruck
from tests.helpers import wait_until
from towtruck.storage.memory import MemoryStore, memory_store

SECONDS = 1000  # virtual

#: Every tick delivered, by actor: (reminder, trio's time when it ran).
TICKS: dict[str, list[tuple[towtruck.Reminder, float]]] = {}


class Cart:
    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.id, self.context = id, context

    async def remind(self, data: dict[str, Any]) -> None:
        await self.context.remind(data.pop("name", "r"), **data)

    async def forget(self, name: str) -> bool:
        return await self.context.forget(name)

    async def list(self) -> list[dict[str, Any]]:
        return [
            {"name": r.name, "at": r.scheduled_at, "every": r.period, "data": r.data}
            for r in await self.context.reminders()
        ]

    async def remind_set(self) -> None:
        await self.context.remind("s", after=1, data={1, 2})

    async def receive_reminder(self, reminder: towtruck.Reminder) -> None:
        TICKS.setdefault(self.id, []).append((reminder, trio.current_time()))


#: The wall clock's time when trio's clock read 0, in the test running now.
WALL_AT_ZERO = [0.0]


@pytest.fixture(autouse=True)
def clear_ticks() -> None:
    TICKS.clear()
    WALL_AT_ZERO[0] = time.time()  # trio's autojump clock starts at 0


def follow_trio(runtime: towtruck.Runtime) -> None:
    """Make the runtime's reminders read a wall clock that moves with trio's, the same
    for every runtime of the test."""
    runtime.reminders.clock = lambda: WALL_AT_ZERO[0] + trio.current_time()


@asynccontextmanager
async def node(store: str, factory: Any = Cart, **settings: Any) -> AsyncIterator[towtruck.Runtime]:
    async with towtruck.open_runtime(factory, state_store=store, **settings) as runtime:
        follow_trio(runtime)
        yield runtime


def ticks(actor: str) -> list[towtruck.Reminder]:
    return [reminder for reminder, _ in TICKS.get(actor, [])]


async def test_a_reminder_fires_once_after_its_delay_then_is_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with node("memory:") as runtime:
            start = trio.current_time()
            await runtime.client.invoke("a", "remind", {"after": 10, "data": {"why": "idle"}})
            await trio.sleep(5)
            assert ticks("a") == []
            await trio.sleep(10)
            (tick,) = ticks("a")
            assert tick.name == "r"
            assert tick.data == {"why": "idle"}
            assert tick.missed == 0
            assert tick.period is None
            assert tick.scheduled_at == pytest.approx(runtime.reminders.clock() - 15 + 10)
            assert await runtime.client.invoke("a", "list") == []
            await trio.sleep(100)
            assert len(ticks("a")) == 1
            assert trio.current_time() - start > 100


async def test_a_periodic_reminder_ticks_on_its_beat_until_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with node("memory:") as runtime:
            await runtime.client.invoke("b", "remind", {"every": 5})
            first = runtime.reminders.clock() + 5
            await trio.sleep(21)
            got = ticks("b")
            assert [t.scheduled_at for t in got] == pytest.approx([first + 5 * n for n in range(4)])
            assert len({t.tick_id for t in got}) == 4
            wall = runtime.reminders.clock() - trio.current_time()  # trio's time -> wall
            assert all(0 <= wall + at - t.scheduled_at < 0.5 for t, at in TICKS["b"])
            assert await runtime.client.invoke("b", "forget", "r")
            assert not await runtime.client.invoke("b", "forget", "r")
            await trio.sleep(30)
            assert len(ticks("b")) == 4
            assert runtime.reminders.statistics()["delivered"] == 4


async def test_a_reminder_activates_its_actor_after_collection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with node("memory:", max_inactivity=2, gc_interval=1) as runtime:
            await runtime.client.invoke("c", "remind", {"after": 30})
            await trio.sleep(10)
            assert "c" not in runtime.catalog  # collected
            await trio.sleep(25)
            assert len(ticks("c")) == 1


async def test_after_downtime_one_tick_comes_with_the_missed_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared: MemoryStore = memory_store("downtime")
    with trio.fail_after(SECONDS):
        async with node(shared.url) as runtime:
            await runtime.client.invoke("d", "remind", {"every": 10})
            await trio.sleep(25)  # two ticks
        assert len(ticks("d")) == 2
        await trio.sleep(100)  # no node: ten beats pass
        async with node(shared.url) as runtime:
            await trio.sleep(2)
            got = ticks("d")
            assert len(got) == 3
            assert got[2].missed == 9
            await trio.sleep(10)
            assert len(ticks("d")) == 4  # back on the beat
            assert ticks("d")[3].missed == 0


@pytest.mark.parser_free  # the store
async def test_reminders_survive_a_restart_of_an_sqlite_node(tmp_path: Any) -> None:
    """On the real clock: the store's thread does real work."""
    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    with trio.fail_after(20):
        async with towtruck.open_runtime(Cart, state_store=url) as runtime:
            await runtime.client.invoke("e", "remind", {"after": 1.0, "data": [1, 2]})
        assert ticks("e") == []
        async with towtruck.open_runtime(Cart, state_store=url, reminder_refresh=0.2):

            async def ticked() -> bool:
                return bool(ticks("e"))

            await wait_until(ticked)
            (tick,) = ticks("e")
            assert tick.data == [1, 2]


async def test_receive_reminder_is_never_callable_from_outside(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with node("memory:") as runtime:
            with pytest.raises(towtruck.MethodNotFound):
                await runtime.client.invoke("f", "receive_reminder", None)


async def test_a_tick_that_raises_is_logged_and_counted_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failures = 0

    def create(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> object:
        async def receive_reminder(reminder: towtruck.Reminder) -> None:
            nonlocal failures
            failures += 1
            raise ValueError("cannot")

        async def start() -> None:
            await context.remind("r", every=5)

        return {"start": start, "receive_reminder": receive_reminder}

    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(create) as runtime:
            follow_trio(runtime)
            await runtime.client.invoke("g", "start")
            await trio.sleep(16)
            assert failures == 3  # once per tick: never retried in a loop


async def test_periods_below_the_minimum_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with node("memory:") as runtime:
            with pytest.raises(towtruck.ActorError, match="min_reminder_period"):
                await runtime.client.invoke("h", "remind", {"every": 0.5})
            with pytest.raises(towtruck.ActorError, match="at=, after= or every="):
                await runtime.client.invoke("h", "remind", {})
            with pytest.raises(towtruck.ActorError, match="cannot be stored as JSON"):
                await runtime.client.invoke("h", "remind_set")


async def test_forget_during_a_tick_lets_it_finish_and_starts_no_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = trio.Event()
    release = trio.Event()
    runs = 0

    def create(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> object:
        async def receive_reminder(reminder: towtruck.Reminder) -> None:
            nonlocal runs
            runs += 1
            started.set()
            await release.wait()

        async def start() -> None:
            await context.remind("r", every=5)

        return {"start": start, "receive_reminder": receive_reminder}

    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(create) as runtime:
            follow_trio(runtime)
            await runtime.client.invoke("i", "start")
            await started.wait()
            store = await runtime.store.get()
            assert await store.forget_reminder("i", "r")  # as DELETE .../reminders/r does
            runtime.reminders.unschedule("i", "r")
            release.set()
            await trio.sleep(60)
            assert runs == 1
            assert await store.reminders("i") == []


async def test_a_tick_cut_off_by_a_crash_comes_again_with_the_same_tick_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared: MemoryStore = memory_store("crash")
    started = trio.Event()

    class Hanging(Cart):
        async def receive_reminder(self, reminder: towtruck.Reminder) -> None:
            await super().receive_reminder(reminder)
            started.set()
            await trio.sleep_forever()  # the node dies before this returns

    with trio.fail_after(SECONDS):
        async with node(shared.url, Hanging) as runtime:
            await runtime.client.invoke("k", "remind", {"after": 5})
            await started.wait()
            runtime.abort()  # as kill -9 would
        async with node(shared.url):
            await trio.sleep(3)
            first, again = ticks("k")
            assert again.tick_id == first.tick_id  # the same tick: the actor can tell
            assert await shared.reminders("k") == []  # and now it is done
