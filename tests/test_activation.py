"""How a turn runs: in the caller's task when the actor is idle, in the actor's own
task when calls queue; never cut short by a caller, always bounded by its deadline."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import towtruck
from towtruck.methods import methods_of

DEADLINE = 10_000


class Kinds:
    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.steps: list[str] = []

    async def quick(self, data: Any) -> str:
        return "quick"

    async def waits(self, data: Any) -> str:
        await trio.lowlevel.checkpoint()
        return "waits"

    async def loops(self, data: Any) -> list[Any]:
        return [x async for x in _numbers()]

    async def guarded(self, data: Any) -> None:
        async with trio.open_nursery():
            pass

    def plain(self, data: Any) -> str:
        return "plain"

    async def two_steps(self, data: Any) -> list[str]:
        self.steps.append("first")
        await trio.sleep(1)
        self.steps.append("second")
        return self.steps


async def _numbers() -> Any:
    yield 1


def test_methods_that_cannot_suspend_are_told_apart() -> None:
    methods = methods_of(Kinds("k", None))  # type: ignore[arg-type]
    assert not methods["quick"].may_suspend
    assert not methods["plain"].may_suspend
    for name in ("waits", "loops", "guarded", "two_steps"):
        assert methods[name].may_suspend, name


@pytest.mark.parametrize("method", ["quick", "waits", "plain"])
async def test_every_call_is_a_checkpoint(
    autojump_clock: trio.testing.MockClock, method: str
) -> None:
    counts = [0, 0, 0]
    async with towtruck.open_runtime(Kinds, environ={}) as runtime:

        async def caller(i: int) -> None:
            while sum(counts) < 300:
                await runtime.client.invoke(str(i), method)
                counts[i] += 1

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(caller, i)
    assert min(counts) >= 90, counts


async def test_a_cancelled_caller_never_cuts_a_turn_in_two(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(Kinds, environ={}) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.client.invoke, "k", "two_steps")
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()  # the caller goes, in the middle of the turn
            answer = await runtime.client.invoke("k", "two_steps")
    assert answer == ["first", "second", "first", "second"]


async def test_a_turn_that_never_ends_is_cut_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def forever(data: Any) -> None:
            await trio.sleep_forever()

        return {"forever": forever, "hello": lambda data: "hello"}

    async with towtruck.open_runtime(create_actor, environ={}, call_timeout=5) as runtime:
        with trio.fail_after(DEADLINE):
            start = trio.current_time()
            with pytest.raises(towtruck.CallTimeout):
                await runtime.client.invoke("a", "forever")
            assert trio.current_time() - start == pytest.approx(5)
            assert await runtime.client.invoke("a", "hello") == "hello"


async def test_stopping_cuts_turns_running_in_callers_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def forever(data: Any) -> None:
            await trio.sleep_forever()

        return {"forever": forever}

    errors: list[towtruck.TowtruckError] = []
    with trio.fail_after(DEADLINE):
        async with (
            towtruck.open_runtime(
                create_actor, environ={}, call_timeout=1000, shutdown_timeout=1
            ) as runtime,
            trio.open_nursery() as nursery,
        ):

            async def call() -> None:
                try:
                    await runtime.client.invoke("a", "forever")
                except towtruck.CallInterrupted as exc:
                    errors.append(exc)

            nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await runtime.stop()
            assert trio.current_time() - start <= 3
    assert len(errors) == 1


async def test_calls_queued_behind_a_turn_run_in_order_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(Kinds, environ={}) as runtime:
        answers: list[list[str]] = []

        async def call() -> None:
            answers.append(await runtime.client.invoke("k", "two_steps"))

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(call)
                    await trio.testing.wait_all_tasks_blocked()
    assert [len(a) for a in answers] == [2, 4, 6]
    assert answers[-1] == ["first", "second"] * 3


class PlainHooks:
    def __init__(self, id: str, client: towtruck.Client, events: list[str]) -> None:
        self.id, self.events = id, events

    def activate(self) -> None:
        self.events.append(f"activate {self.id}")

    def deactivate(self) -> None:
        self.events.append(f"deactivate {self.id}")

    def hello(self, data: Any) -> str:
        self.events.append(f"hello {self.id}")
        return "hi"


@pytest.mark.parametrize("style", ["class", "mapping"])
async def test_plain_hooks_run_like_async_ones(
    autojump_clock: trio.testing.MockClock, style: str
) -> None:
    events: list[str] = []

    def create_actor(id: str, client: towtruck.Client) -> Any:
        if style == "class":
            return PlainHooks(id, client, events)
        return {
            "activate": lambda: events.append(f"activate {id}"),
            "deactivate": lambda: events.append(f"deactivate {id}"),
            "hello": lambda data: events.append(f"hello {id}") or "hi",
        }

    async with towtruck.open_runtime(
        create_actor, environ={}, max_inactivity=5, gc_interval=1
    ) as runtime:
        assert await runtime.client.invoke("a", "hello") == "hi"
        await trio.sleep(10)  # on the autojump clock: the collector takes the idle actor
        assert events == ["activate a", "hello a", "deactivate a"]
        assert await runtime.client.invoke("a", "hello") == "hi"
    assert events == ["activate a", "hello a", "deactivate a"] * 2
