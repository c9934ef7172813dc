"""How a turn runs: in the caller's task when the actor is idle, in the actor's own
task when calls queue; never cut short by a caller, always bounded by its deadline."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

import towtruck
from tests.processes import PROCESS_SECONDS, run_to_end, running, towtruck_command
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
    async with towtruck.open_runtime(Kinds) as runtime:

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
    async with towtruck.open_runtime(Kinds) as runtime:
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

    async with towtruck.open_runtime(create_actor, call_timeout=5) as runtime:
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
            towtruck.open_runtime(create_actor, call_timeout=1000, shutdown_timeout=1) as runtime,
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
    async with towtruck.open_runtime(Kinds) as runtime:
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

    async with towtruck.open_runtime(create_actor, max_inactivity=5, gc_interval=1) as runtime:
        assert await runtime.client.invoke("a", "hello") == "hi"
        await trio.sleep(10)  # on the autojump clock: the collector takes the idle actor
        assert events == ["activate a", "hello a", "deactivate a"]
        assert await runtime.client.invoke("a", "hello") == "hi"
    assert events == ["activate a", "hello a", "deactivate a"] * 2


def exit_now(kind: str) -> NoReturn:
    """What a library might do: ``sys.exit()``, or raise KeyboardInterrupt itself."""
    if kind == "SystemExit":
        sys.exit(3)
    raise KeyboardInterrupt("raised by the actor's own code")


def create_exiting(kind: str, where: str, events: list[str]) -> Callable[..., Any]:
    """Actors that raise ``kind`` the first time they reach ``where``."""
    armed = [True]

    def reach(place: str) -> None:
        if place == where and armed:
            armed.clear()
            exit_now(kind)

    def create_actor(id: str, client: towtruck.Client) -> dict[str, Any]:
        reach("create_actor")

        async def activate() -> None:
            await trio.lowlevel.checkpoint()
            reach("activate")

        async def deactivate() -> None:
            events.append(f"deactivate {id}")
            reach("deactivate")

        async def quick(data: Any) -> str:
            reach("quick")
            return "ok"

        async def waits(data: Any) -> str:
            await trio.sleep(1)
            reach("waits")
            return "ok"

        def plain(data: Any) -> str:
            reach("plain")
            return "ok"

        async def queued(data: Any) -> str:
            reach("queued")
            return "ok"

        def queued_plain(data: Any) -> str:
            reach("queued_plain")
            return "ok"

        async def inline(data: Any) -> str:
            reach("inline")
            return "ok"

        async def reenter(data: Any) -> Any:
            return await client.invoke(id, "inline")

        async def slow(data: Any) -> str:
            await trio.sleep(1)
            return "slow"

        hooks = {"activate": activate} if where == "activate" else {}  # else: caller's task
        return {
            **hooks,
            "deactivate": deactivate,
            "quick": quick,
            "waits": waits,
            "plain": plain,
            "queued": queued,
            "queued_plain": queued_plain,
            "inline": inline,
            "reenter": reenter,
            "slow": slow,
        }

    return create_actor


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize(
    ("where", "method"),
    [
        ("quick", "quick"),  # async, runs to its end in one step
        ("waits", "waits"),  # async, awaits: in the caller's task, in a cancel scope
        ("plain", "plain"),
        ("queued", "queued"),  # in the actor's own task, behind another call
        ("queued_plain", "queued_plain"),
        ("inline", "reenter"),  # reentrant, inside the turn that called it
        ("activate", "quick"),
        ("create_actor", "quick"),
    ],
)
async def test_sys_exit_or_keyboard_interrupt_in_actor_code_fails_only_that_call(
    autojump_clock: trio.testing.MockClock, kind: str, where: str, method: str
) -> None:
    events: list[str] = []
    async with towtruck.open_runtime(create_exiting(kind, where, events)) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                if where.startswith("queued"):
                    await runtime.client.invoke("a", "quick")
                    nursery.start_soon(runtime.client.invoke, "a", "slow")
                    await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(towtruck.ActorError) as caught:
                    await runtime.client.invoke("a", method)
            assert caught.value.exception_type == kind
            assert caught.value.details["method"] == where
            assert caught.value.message.endswith(
                "SystemExit(3)" if kind == "SystemExit" else "raised by the actor's own code"
            )
            assert caught.value.status == 500
            # The actor (or, after a failed activation, a fresh one) and the node live on.
            assert await runtime.client.invoke("a", method) == "ok"
            assert await runtime.client.invoke("b", "quick") == "ok"
    assert sorted(events) == ["deactivate a", "deactivate b"]


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
async def test_sys_exit_in_deactivate_leaves_the_other_actors_to_deactivate(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    events: list[str] = []
    with trio.fail_after(DEADLINE):
        async with towtruck.open_runtime(create_exiting(kind, "deactivate", events)) as runtime:
            for actor in "abc":
                assert await runtime.client.invoke(actor, "quick") == "ok"
    assert sorted(events) == ["deactivate a", "deactivate b", "deactivate c"]
    assert not runtime.serving


# A real Ctrl-C, in a program that embeds towtruck under plain trio.run (trio's own
# SIGINT handling): trio raises KeyboardInterrupt in whatever code runs, here an actor's
# method, either at once (the code is not protected) or at the main task's next
# checkpoint. That one is not the actor's failure: it ends the program, as Ctrl-C does.
CTRL_C_SCRIPT = """
import signal
import trio
import towtruck

# Ctrl-C as a terminal delivers it, even where the tests run in the background (a
# shell starts background commands with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

@trio.lowlevel.enable_ki_protection
def ctrl_c_protected():
    signal.raise_signal(signal.SIGINT)

def create_actor(id, client):
    async def ctrl_c(data):
        signal.raise_signal(signal.SIGINT)
        await trio.sleep(10)
        return "not interrupted"

    async def ctrl_c_at_checkpoint(data):
        ctrl_c_protected()
        await trio.sleep(10)
        return "not interrupted"

    return {{"ctrl_c": ctrl_c, "ctrl_c_at_checkpoint": ctrl_c_at_checkpoint}}

async def main():
    async with towtruck.open_runtime(create_actor) as runtime:
        try:
            print(await runtime.client.invoke("a", "{method}"))
        except towtruck.TowtruckError as exc:
            print("the call failed:", repr(exc))

try:
    trio.run(main)
except* KeyboardInterrupt:
    print("interrupted by Ctrl-C")
"""


@pytest.mark.parser_free  # signals
@pytest.mark.subprocess
@pytest.mark.parametrize("method", ["ctrl_c", "ctrl_c_at_checkpoint"])
async def test_a_real_ctrl_c_under_plain_trio_run_still_interrupts_the_program(
    method: str,
) -> None:
    with trio.fail_after(PROCESS_SECONDS):
        result = await run_to_end([sys.executable, "-c", CTRL_C_SCRIPT.format(method=method)])
    assert result.stdout.strip() == "interrupted by Ctrl-C", result.stdout + result.stderr


@pytest.mark.subprocess
async def test_sys_exit_in_a_served_method_answers_500_and_the_node_serves_on(
    http: httpx.AsyncClient,
) -> None:
    argv = [*towtruck_command(), "serve", "tests.served:create_actor", "--port", "0"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=r"serving on (http://127\.0\.0\.1:\d+)") as (
            process,
            match,
            output,
        ):
            url = match.group(1)
            answer = await http.get(f"{url}/invoke/1/exit")
            assert answer.status_code == 500, answer.text
            error = answer.json()["error"]
            assert (error["type"], error["exception"]) == ("ActorError", "SystemExit")
            assert error["message"] == "SystemExit(3)"
            assert (await http.get(f"{url}/invoke/1/hello")).json() == {"hello": "from actor 1"}
            assert (await http.get(f"{url}/invoke/2/hello")).json() == {"hello": "from actor 2"}
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert process.returncode == 0, output.text
    assert "deactivate 1" in output.text
    assert "deactivate 2" in output.text


def create_slow(id: str, client: towtruck.Client) -> dict[str, Any]:
    async def slow(data: Any) -> str:
        await trio.sleep(1)  # a turn takes 1 s
        return "done"

    return {"slow": slow}


async def call_and_note(
    runtime: towtruck.Runtime, outcomes: list[tuple[float, str]], start: float
) -> None:
    """Call ``slow`` and note when the answer came (since ``start``) and what it was."""
    try:
        await runtime.client.invoke("a", "slow")
    except towtruck.CallTimeout as exc:
        waited = "waiting in the mailbox" in exc.message or "before it ran" in exc.message
        where = "waiting" if waited else "running"
        outcomes.append((trio.current_time() - start, f"CallTimeout while {where}"))
    except towtruck.TowtruckError as exc:
        outcomes.append((trio.current_time() - start, type(exc).__name__))
    else:
        outcomes.append((trio.current_time() - start, "done"))


async def test_calls_that_cannot_start_before_their_deadline_are_refused_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[tuple[float, str]] = []
    async with towtruck.open_runtime(create_slow, call_timeout=4.25) as runtime:
        with trio.fail_after(DEADLINE):
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                # Two calls: the first runs from 0 to 1 s, the second waits, then runs
                # from 1 to 2 s; the actor has learned that its turns take 1 s.
                for _ in range(2):
                    nursery.start_soon(call_and_note, runtime, outcomes, start)
                    await trio.testing.wait_all_tasks_blocked()
                await trio.sleep_until(start + 1.5)
                # Twenty more at 1.5 s: the k-th would start at 2 + k s; the deadline is
                # 5.75 s, so four start in time and sixteen never could.
                for _ in range(20):
                    nursery.start_soon(call_and_note, runtime, outcomes, start)
                await trio.testing.wait_all_tasks_blocked()
                refused = [o for o in outcomes if o[1] == "Backlogged"]
                assert refused == [(1.5, "Backlogged")] * 16, "refused at once, at 1.5 s"
    assert sorted(outcomes) == sorted(
        [
            (1.0, "done"),
            (2.0, "done"),
            *[(1.5, "Backlogged")] * 16,
            (3.0, "done"),
            (4.0, "done"),
            (5.0, "done"),
            (5.75, "CallTimeout while running"),  # started in time, but did not finish
        ]
    )


async def test_a_burst_on_an_idle_actor_sheds_what_cannot_start_once_a_turn_is_measured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[tuple[float, str]] = []
    async with towtruck.open_runtime(create_slow, call_timeout=4.5) as runtime:
        with trio.fail_after(DEADLINE):
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(20):  # nothing is known of the turns yet: all may wait
                    nursery.start_soon(call_and_note, runtime, outcomes, start)
    # After the first turn (1 s), the k-th waiting call would start at 1 + k s: those
    # past the deadline (4.5 s) are refused then, not left to time out in the mailbox.
    assert sorted(outcomes) == sorted(
        [
            (1.0, "done"),
            *[(1.0, "Backlogged")] * 15,
            (2.0, "done"),
            (3.0, "done"),
            (4.0, "done"),
            (4.5, "CallTimeout while running"),
        ]
    )


async def test_a_backlogged_refusal_is_a_503_that_says_when_to_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with towtruck.open_runtime(create_slow) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(2):  # the second waits, then runs from 1 to 2 s
                    nursery.start_soon(runtime.client.invoke, "a", "slow")
                    await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(1.5)
                # The caller's own cancel scope sets this call's deadline: 1.9 s.
                with trio.move_on_after(0.4), pytest.raises(towtruck.Backlogged) as caught:
                    await runtime.client.invoke("a", "slow")
    error = caught.value
    assert isinstance(error, towtruck.Unavailable)
    assert error.status == 503
    assert (b"retry-after", b"1") in error.headers
    assert error.details["actor"] == "a"
    assert "could not start before its deadline" in error.message


class FailsToActivate:
    def __init__(self, id: str, client: towtruck.Client) -> None:
        pass

    async def activate(self) -> None:
        await trio.sleep(1)
        raise ValueError("no")

    async def hello(self, data: Any) -> str:
        return "hello"


async def test_each_call_waiting_on_a_failed_activation_gets_an_error_of_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One exception raised in several tasks would chain their tracebacks."""
    errors: list[towtruck.ActorError] = []

    async def call(runtime: towtruck.Runtime) -> None:
        try:
            await runtime.client.invoke("f", "hello")
        except towtruck.ActorError as exc:
            errors.append(exc)

    async with towtruck.open_runtime(FailsToActivate) as runtime:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(call, runtime)
    assert [error.message for error in errors] == ["no"] * 3
    assert len({id(error) for error in errors}) == 3
