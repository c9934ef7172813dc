"""Timers on trio's autojump clock: ticks as turns, on their beat, never interleaved
with calls, skipped rather than piled up, gone with their activation."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import towtruck

SECONDS = 100  # virtual


class Ticker:
    """Records its ticks (by trio's clock) and its calls' turns."""

    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.context = context
        self.events: list[tuple[str, float]] = []
        self.timer: towtruck.Timer | None = None

    def start(self, data: dict[str, Any]) -> None:
        self.timer = self.context.timer(
            data.get("name", "t"),
            self.tick,
            every=data.get("every"),
            after=data.get("after"),
            keep_alive=data.get("keep_alive", False),
        )

    async def tick(self) -> None:
        self.events.append(("tick", trio.current_time()))

    def stop(self) -> None:
        assert self.timer is not None
        self.timer.cancel()

    async def slow(self, seconds: float) -> None:
        self.events.append(("call begins", trio.current_time()))
        await trio.sleep(seconds)
        self.events.append(("call ends", trio.current_time()))

    def ticks(self) -> int:
        return sum(kind == "tick" for kind, _ in self.events)


async def actor(runtime: towtruck.Runtime, actor_id: str) -> Ticker:
    activation = runtime.catalog.get(actor_id)
    assert activation is not None
    instance = activation.instance
    assert isinstance(instance, Ticker)
    return instance


async def test_a_timer_ticks_on_its_beat_until_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Ticker) as runtime:
            start = trio.current_time()
            await runtime.client.invoke("a", "start", {"every": 1.0})
            await trio.sleep(5.5)
            ticker = await actor(runtime, "a")
            times = [t - start for kind, t in ticker.events if kind == "tick"]
            assert times == pytest.approx([1, 2, 3, 4, 5])
            await runtime.client.invoke("a", "stop")
            await trio.sleep(5)
            assert ticker.ticks() == 5


async def test_a_one_shot_timer_ticks_once_after_its_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Ticker) as runtime:
            await runtime.client.invoke("b", "start", {"after": 2.0})
            await trio.sleep(10)
            assert (await actor(runtime, "b")).ticks() == 1
            assert runtime.catalog.get("b").context.timers == {}  # type: ignore[union-attr]


async def test_ticks_never_interleave_with_a_call_and_never_pile_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Ticker) as runtime:
            await runtime.client.invoke("c", "start", {"every": 0.5})
            await runtime.client.invoke("c", "slow", 3.0)  # six beats pass meanwhile
            await trio.sleep(1.1)
            events = (await actor(runtime, "c")).events
            begins = next(t for kind, t in events if kind == "call begins")
            ends = next(t for kind, t in events if kind == "call ends")
            assert not [t for kind, t in events if kind == "tick" and begins < t < ends]
            # One tick waited out the call; the beats missed meanwhile were skipped.
            after = [t for kind, t in events if kind == "tick" and t >= ends]
            assert after[0] == pytest.approx(ends)
            assert len(after) == 3  # then on the beat: +0.5, +1.0


async def test_a_tick_that_raises_is_logged_and_the_timer_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ticks = 0

    def create(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> object:
        def tick() -> None:
            nonlocal ticks
            ticks += 1
            raise ValueError("tock")

        context.timer("failing", tick, every=1.0)  # from the factory
        return {"ping": lambda: "pong"}

    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(create) as runtime:
            assert await runtime.client.invoke("d", "ping") == "pong"
            await trio.sleep(3.5)
            assert ticks == 3
            assert await runtime.client.invoke("d", "ping") == "pong"
    assert any("tock" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.mark.parametrize("keep_alive", [False, True])
async def test_ticks_keep_an_idle_actor_in_memory_only_if_asked(
    autojump_clock: trio.testing.MockClock, keep_alive: bool
) -> None:
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Ticker, max_inactivity=5, gc_interval=1) as runtime:
            # Ticks half-way between the collector's runs, so that none coincides.
            await runtime.client.invoke(
                "e", "start", {"after": 0.5, "every": 1.0, "keep_alive": keep_alive}
            )
            ticker = await actor(runtime, "e")
            await trio.sleep(20)
            assert ("e" in runtime.catalog) is keep_alive
            if keep_alive:
                assert ticker.ticks() == 20
            else:  # collected 5 s after its last call: its timer went with it
                assert ticker.ticks() == 5
                assert runtime.catalog.timers.fired == 5


async def test_a_timer_of_the_same_name_replaces_the_old_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(SECONDS):
        async with towtruck.open_runtime(Ticker) as runtime:
            await runtime.client.invoke("f", "start", {"every": 1.0})
            await runtime.client.invoke("f", "start", {"every": 4.0})
            await trio.sleep(8.5)
            assert (await actor(runtime, "f")).ticks() == 2


def test_a_timer_needs_a_positive_period() -> None:
    context = towtruck.ActorContext("x", None, None)  # type: ignore[arg-type]
    for bad in ({}, {"every": 0}, {"after": -1}, {"every": float("nan")}):
        with pytest.raises(ValueError, match=r"every|after"):
            context.timer("t", lambda: None, **bad)
