"""Stopping a runtime, and what it counts (autojump clock, no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import towtruck
from tests.actors import EVENTS, create_recorder

DEADLINE = 10_000


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    EVENTS.clear()


async def test_stop_finishes_calls_in_flight_refuses_new_ones_and_deactivates_every_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers: list[Any] = []
    runtime = towtruck.Runtime(create_recorder, towtruck.Settings(shutdown_timeout=30))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.serve)
            for actor_id in "abc":
                await runtime.client.invoke(actor_id, "echo")

            async def slow_call() -> None:
                answers.append(await runtime.client.invoke("a", "sleep", 10))

            nursery.start_soon(slow_call)
            await trio.sleep(1)
            nursery.start_soon(runtime.stop)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(towtruck.NodeStopping):
                await runtime.client.invoke("b", "echo")
            assert runtime.serving
        assert not runtime.serving
    assert answers == ["slept"]
    assert sorted(e for e in EVENTS if e[1] == "deactivate") == [
        ("a", "deactivate"),
        ("b", "deactivate"),
        ("c", "deactivate"),
    ]
    assert len(runtime.catalog) == 0


async def test_actors_may_still_call_each_other_while_calls_in_flight_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def relay(data: Any) -> Any:
            await trio.sleep(5)
            return await client.invoke("other", "hello")

        return {"relay": relay, "hello": lambda data: "hello"}

    answers: list[Any] = []
    with trio.fail_after(DEADLINE):
        async with (
            towtruck.open_runtime(create_actor) as runtime,
            trio.open_nursery() as nursery,
        ):

            async def call() -> None:
                answers.append(await runtime.client.invoke("a", "relay"))

            nursery.start_soon(call)
            await trio.sleep(1)
            nursery.start_soon(runtime.stop)
    assert answers == ["hello"]


async def test_calls_cut_at_the_shutdown_deadline_fail_as_interrupted_or_stopping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[str] = []
    with trio.fail_after(DEADLINE):
        async with (
            towtruck.open_runtime(
                create_recorder, shutdown_timeout=2, call_timeout=1000
            ) as runtime,
            trio.open_nursery() as nursery,
        ):

            async def call() -> None:
                try:
                    await runtime.client.invoke("a", "sleep", 500)
                except (towtruck.CallInterrupted, towtruck.NodeStopping) as exc:
                    errors.append(type(exc).__name__)

            for _ in range(3):
                nursery.start_soon(call)
            await trio.sleep(1)
            start = trio.current_time()
            await runtime.stop()
            assert trio.current_time() - start <= 2 * 2 + 1
    # The running call may have done part of its work; the queued ones never started.
    assert sorted(errors) == ["CallInterrupted", "NodeStopping", "NodeStopping"]


async def test_statistics_count_calls_and_failures(autojump_clock: trio.testing.MockClock) -> None:
    async with towtruck.open_runtime(create_recorder) as runtime:
        with trio.fail_after(DEADLINE):
            await runtime.client.invoke("a", "echo")
            with pytest.raises(towtruck.ActorError):
                await runtime.client.invoke("a", "fail")
            await trio.sleep(3)
        stats = runtime.statistics()
        assert (stats.calls, stats.failed, stats.in_flight) == (2, 1, 0)
        assert stats.uptime == pytest.approx(3, abs=0.1)
        assert stats.actors.actors == 1
