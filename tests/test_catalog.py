"""Activation, turns and collection, on trio's autojump clock (no HTTP)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import towtruck
from tests import actors
from tests.actors import EVENTS, create_counter, create_recorder

# Virtual seconds: the autojump clock makes these pass at once.
DEADLINE = 10_000


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    EVENTS.clear()


@pytest.fixture
async def recorders(autojump_clock: trio.testing.MockClock) -> AsyncIterator[towtruck.Runtime]:
    async with towtruck.open_runtime(create_recorder) as runtime:
        yield runtime


async def test_activate_runs_before_the_first_call_and_calls_wait_for_it(
    recorders: towtruck.Runtime,
) -> None:
    results: list[Any] = []

    async def call(i: int) -> None:
        results.append(await recorders.client.invoke("a", "echo", i))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(call, i)
    assert sorted(r["data"] for r in results) == [0, 1, 2, 3, 4]
    assert all(r["activated"] for r in results)
    assert EVENTS == [("a", "activate")]
    assert recorders.catalog.statistics().activations == 1


async def test_turns_never_interleave(autojump_clock: trio.testing.MockClock) -> None:
    answers: list[int] = []
    async with towtruck.open_runtime(create_counter) as runtime:

        async def increment() -> None:
            answers.append(await runtime.client.invoke("c", "increment"))

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(increment)
            assert await runtime.client.invoke("c", "get") == 200
    assert sorted(answers) == list(range(1, 201))


async def test_calls_run_in_the_order_they_arrive(autojump_clock: trio.testing.MockClock) -> None:
    order: list[int] = []

    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def record(data: int) -> None:
            order.append(data)
            await trio.sleep(1)

        return {"record": record}

    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(runtime.client.invoke, "a", "record", i)
                    await trio.testing.wait_all_tasks_blocked()
    assert order == list(range(10))


async def test_every_kind_of_method_is_callable(recorders: towtruck.Runtime) -> None:
    client = recorders.client
    with trio.fail_after(DEADLINE):
        assert await client.invoke("a", "plain", [1]) == "plain [1]"
        assert await client.invoke("a", "no_data") == "no data"
        assert await client.invoke("a", "static") == "static"
        assert await client.invoke(7, "echo", {"x": 1}) == {"data": {"x": 1}, "activated": True}
        assert "7" in recorders.catalog


async def test_a_method_that_raises_fails_only_its_call(recorders: towtruck.Runtime) -> None:
    with trio.fail_after(DEADLINE):
        with pytest.raises(towtruck.ActorError) as caught:
            await recorders.client.invoke("a", "fail", 3)
        assert caught.value.exception_type == "ValueError"
        assert caught.value.message == "bad value 3"
        assert caught.value.details["actor"] == "a"
        assert caught.value.status == 500
        assert (await recorders.client.invoke("a", "echo"))["activated"]
    assert recorders.catalog.statistics().activations == 1


async def test_a_result_that_is_not_json_is_an_actor_error(recorders: towtruck.Runtime) -> None:
    with trio.fail_after(DEADLINE), pytest.raises(towtruck.ActorError) as caught:
        await recorders.client.invoke("a", "not_json")
    assert caught.value.exception_type == "TypeError"


@pytest.mark.parametrize(
    "name", ["_private", "__init__", "activate", "deactivate", "secret", "prop", "nope", "a-b"]
)
async def test_only_public_methods_are_callable(recorders: towtruck.Runtime, name: str) -> None:
    with trio.fail_after(DEADLINE), pytest.raises(towtruck.MethodNotFound):
        await recorders.client.invoke("a", name)
    if name.startswith("_") or name in ("activate", "deactivate", "a-b"):
        assert "a" not in recorders.catalog, "no actor is activated for an impossible name"


async def test_data_and_results_are_copies(recorders: towtruck.Runtime) -> None:
    data = {"list": [1, 2]}
    with trio.fail_after(DEADLINE):
        answer = await recorders.client.invoke("a", "echo", data)
    assert answer["data"] == data
    assert answer["data"] is not data
    with pytest.raises(TypeError):
        await recorders.client.invoke("a", "echo", object())


@pytest.mark.parametrize("bad", ["", "x" * 257, "tab\there", "nul\x00", None, 1.5])
async def test_bad_actor_ids_are_refused(recorders: towtruck.Runtime, bad: Any) -> None:
    with pytest.raises(towtruck.InvalidActorId):
        await recorders.client.invoke(bad, "echo")


async def test_activate_failure_fails_the_waiting_calls_and_the_next_call_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts = []

    class Flaky:
        def __init__(self, id: str, client: towtruck.Client) -> None:
            pass

        async def activate(self) -> None:
            attempts.append(1)
            await trio.sleep(1)
            if len(attempts) == 1:
                raise RuntimeError("database down")

        def hello(self, data: Any) -> str:
            return "hello"

    failures: list[towtruck.TowtruckError] = []

    async def call() -> None:
        try:
            await runtime.client.invoke("f", "hello")
        except towtruck.ActorError as exc:
            failures.append(exc)

    async with towtruck.open_runtime(Flaky) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(call)
            assert len(failures) == 3
            assert {f.details["method"] for f in failures} == {"activate"}
            assert "f" not in runtime.catalog
            assert await runtime.client.invoke("f", "hello") == "hello"
    assert len(attempts) == 2


async def test_factory_failure_is_an_actor_error(autojump_clock: trio.testing.MockClock) -> None:
    def create_actor(id: str, client: towtruck.Client) -> object:
        raise KeyError(id)

    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE), pytest.raises(towtruck.ActorError) as caught:
            await runtime.client.invoke("k", "x")
    assert caught.value.details["method"] == "create_actor"
    assert caught.value.exception_type == "KeyError"


def test_async_factories_are_refused() -> None:
    async def create_actor(id: str, client: towtruck.Client) -> object:
        return {}

    with pytest.raises(TypeError, match="plain def"):
        towtruck.Runtime(create_actor, towtruck.Settings())


async def test_idle_actor_is_collected(autojump_clock: trio.testing.MockClock) -> None:
    async with towtruck.open_runtime(create_recorder, max_inactivity=60, gc_interval=10) as runtime:
        with trio.fail_after(DEADLINE):
            await runtime.client.invoke("a", "echo")
            await trio.sleep(50)
            assert "a" in runtime.catalog
            await trio.sleep(25)
            assert "a" not in runtime.catalog
            assert EVENTS == [("a", "activate"), ("a", "deactivate")]
            await runtime.client.invoke("a", "echo")
        stats = runtime.catalog.statistics()
        assert (stats.activations, stats.deactivations) == (2, 1)


async def test_busy_actor_is_not_collected(autojump_clock: trio.testing.MockClock) -> None:
    async with towtruck.open_runtime(
        create_recorder, max_inactivity=5, gc_interval=1, call_timeout=1000
    ) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.client.invoke, "a", "sleep", 100)
                await trio.sleep(50)
                assert "a" in runtime.catalog
                assert await runtime.collect() == 0
            assert await runtime.collect() == 0, "it was used just now"
            await trio.sleep(7)
            assert "a" not in runtime.catalog


async def test_past_max_actors_the_least_recently_used_idle_actor_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_recorder, max_actors=3) as runtime:
        client = runtime.client
        with trio.fail_after(DEADLINE):
            for actor_id in "abc":
                await client.invoke(actor_id, "echo")
                await trio.sleep(1)
            await client.invoke("a", "echo")
            await client.invoke("d", "echo")
            await trio.testing.wait_all_tasks_blocked()
        assert sorted(runtime.catalog._table) == ["a", "c", "d"]
        assert ("b", "deactivate") in EVENTS


async def test_the_count_stays_at_or_below_max_actors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_counter, max_actors=10) as runtime:
        with trio.fail_after(DEADLINE):
            for i in range(100):
                await runtime.client.invoke(i, "increment")
                assert len(runtime.catalog) <= 10
        assert runtime.catalog.statistics().activations == 100


async def test_overloaded_when_no_actor_can_be_collected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_recorder, max_actors=2) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.client.invoke, "a", "sleep", 10)
                nursery.start_soon(runtime.client.invoke, "b", "sleep", 10)
                await trio.sleep(1)
                with pytest.raises(towtruck.Overloaded) as caught:
                    await runtime.client.invoke("c", "echo")
                assert caught.value.status == 503
            assert (await runtime.client.invoke("c", "echo"))["activated"]


async def test_a_full_mailbox_sheds_calls(autojump_clock: trio.testing.MockClock) -> None:
    async with towtruck.open_runtime(create_recorder, mailbox_size=2) as runtime:
        with trio.fail_after(DEADLINE):
            await runtime.client.invoke("a", "echo")
            async with trio.open_nursery() as nursery:
                for _ in range(3):  # one runs, two wait
                    nursery.start_soon(runtime.client.invoke, "a", "sleep", 5)
                    await trio.testing.wait_all_tasks_blocked()
                assert runtime.catalog.statistics().queued == 2
                with pytest.raises(towtruck.MailboxFull):
                    await runtime.client.invoke("a", "echo")
        assert runtime.catalog.statistics().queued == 0


async def test_a_call_times_out_and_the_actor_lives_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_recorder, call_timeout=3) as runtime:
        with trio.fail_after(DEADLINE):
            start = trio.current_time()
            with pytest.raises(towtruck.CallTimeout) as caught:
                await runtime.client.invoke("a", "sleep", 1000)
            assert trio.current_time() - start == pytest.approx(3)
            assert caught.value.status == 504
            assert (await runtime.client.invoke("a", "echo"))["activated"]


async def test_a_call_abandoned_before_its_turn_never_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ran: list[str] = []

    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def slow(data: Any) -> None:
            await trio.sleep(10)

        def record(data: Any) -> None:
            ran.append(data)

        return {"slow": slow, "record": record}

    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.client.invoke, "a", "slow")
                await trio.sleep(1)
                with trio.move_on_after(1) as scope:
                    await runtime.client.invoke("a", "record", "late")
                assert scope.cancelled_caught
            await runtime.client.invoke("a", "record", "later")
    assert ran == ["later"]


async def test_a_caller_already_cancelled_runs_no_turn() -> None:
    """Also a call that would run to its end in one step, whose deadline is not asked
    of trio (ScopedCallContext): the caller's cancellation comes first."""
    ran: list[str] = []

    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def record(data: Any) -> None:  # no await: one step
            ran.append(data)

        async def wait_and_record(data: Any) -> None:
            await trio.lowlevel.checkpoint()
            ran.append(data)

        return {"record": record, "wait_and_record": wait_and_record}

    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE):
            await runtime.client.invoke("a", "record", "first")  # active and idle
            for method in ("record", "wait_and_record"):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await runtime.client.invoke("a", method, "cancelled")
                assert scope.cancelled_caught
            await runtime.client.invoke("a", "record", "after")
    assert ran == ["first", "after"]


async def test_an_actor_calls_itself(autojump_clock: trio.testing.MockClock) -> None:
    from examples import chain

    async with towtruck.open_runtime(chain.create_actor) as runtime:
        with trio.fail_after(DEADLINE):
            assert await runtime.client.invoke(1, "hello") == {"goodbye": "from actor 1"}
            assert await runtime.client.invoke(1, "ask", ["2"]) == {
                "answer": "from actor 2",
                "asker says": "from actor 1",
            }


async def test_a_cycle_of_independent_calls_ends_with_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def cross(other: str) -> Any:
            await trio.sleep(1)  # both turns are running before either calls
            return await client.invoke(other, "hello")

        def hello(data: Any) -> str:
            return "hello"

        return {"cross": cross, "hello": hello}

    errors: list[towtruck.TowtruckError] = []

    async def cross(actor_id: str, other: str) -> None:
        try:
            await runtime.client.invoke(actor_id, "cross", other)
        except towtruck.CallTimeout as exc:
            errors.append(exc)

    async with towtruck.open_runtime(create_actor, call_timeout=5) as runtime:
        with trio.fail_after(DEADLINE):
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cross, "a", "b")
                nursery.start_soon(cross, "b", "a")
            assert trio.current_time() - start == pytest.approx(5)
            assert len(errors) == 2
            assert await runtime.client.invoke("a", "hello") == "hello"


async def test_a_timed_out_call_says_where_it_waited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        async def stubborn(data: Any) -> None:
            with trio.CancelScope(shield=True):  # outlives its deadline
                await trio.sleep(10)

        return {"stubborn": stubborn, "plain": lambda data: "plain"}

    async with towtruck.open_runtime(create_actor, call_timeout=2) as runtime:

        async def running() -> None:
            with pytest.raises(towtruck.CallTimeout, match="it was running"):
                await runtime.client.invoke("a", "stubborn")

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(running)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(towtruck.CallTimeout, match="waiting in the mailbox"):
                    await runtime.client.invoke("a", "plain")


async def test_nested_calls_share_the_first_callers_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_recorder, call_timeout=100) as runtime:
        with trio.fail_after(DEADLINE):
            start = trio.current_time()
            with trio.move_on_after(2):
                await runtime.client.invoke("a", "call", ["b", "sleep", 1000])
            assert trio.current_time() - start == pytest.approx(2)
            await trio.testing.wait_all_tasks_blocked()
            assert runtime.statistics().in_flight == 0, "the inner call gave up too"


async def test_a_call_during_deactivation_waits_for_a_fresh_activation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Slow(actors.Recorder):
        async def deactivate(self) -> None:
            await trio.sleep(5)
            EVENTS.append((self.id, "deactivate"))

    async with towtruck.open_runtime(Slow, max_inactivity=1) as runtime:
        with trio.fail_after(DEADLINE):
            await runtime.client.invoke("a", "echo")
            await trio.sleep(2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.collect)
                await trio.sleep(1)
                assert runtime.catalog.get("a").state is towtruck.ActivationState.DEACTIVATING  # type: ignore[union-attr]
                await runtime.client.invoke("a", "echo")
            assert EVENTS == [("a", "activate"), ("a", "deactivate"), ("a", "activate")]


@pytest.mark.parametrize(
    ("returned", "exception"), [(KeyError("no such row"), "KeyError"), (None, "TypeError")]
)
async def test_a_failing_create_actor_is_logged_like_other_actor_failures(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    returned: BaseException | None,
    exception: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="towtruck")

    def create_actor(id: str, client: towtruck.Client) -> object:
        if isinstance(returned, BaseException):
            raise returned
        return returned

    async with towtruck.open_runtime(create_actor) as runtime:
        with trio.fail_after(DEADLINE), pytest.raises(towtruck.ActorError):
            await runtime.client.invoke("k", "x")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    line = warnings[0].getMessage()
    assert "'k'" in line
    assert "create_actor" in line
    assert exception in line
    assert warnings[0].exc_info is None, "one line at warning; the traceback at debug"
    tracebacks = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(tracebacks) == 1
