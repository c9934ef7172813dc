"""The watchdog: a turn that holds the event loop is named in the log, once."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import httpx
import pytest
import trio

import towtruck
from tests.actors import create_blocker, create_slow_starter, create_slowly
from tests.helpers import wait_until
from tests.processes import PROCESS_SECONDS, running, towtruck_command

pytestmark = pytest.mark.parser_free  # the event loop's watchdog

SERVING = r"serving on (http://127\.0\.0\.1:\d+)"
BLOCKED = "the event loop is blocked"


@pytest.mark.subprocess
async def test_a_blocking_method_is_named_while_it_holds_the_event_loop(
    http: httpx.AsyncClient,
) -> None:
    argv = [*towtruck_command(), "serve", "tests.actors:create_blocker", "--port", "0"]
    argv += ["--blocked-warning", "0.5"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING) as (process, match, output):
            url = match.group(1)
            answer = await http.get(f"{url}/invoke/sleepy/nap/3")
            assert answer.json() == "napped"
            unblocked = await output.wait_for(r"unblocked after (\d+\.\d) s")
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert process.returncode == 0, output.text
    warning = f"{BLOCKED}: actor 'sleepy' method 'nap' has held it for"
    assert output.text.index(warning) < unblocked.start(), "warned while the method held it"
    assert output.text.count(warning) == 1, "one warning per blocked episode"
    assert "trio.to_thread.run_sync" in output.text
    assert 'actors.py", line' in output.text, "the stack shows the method's line"
    assert float(unblocked.group(1)) >= 2.0  # a lower bound: a slow machine only raises it


@pytest.mark.parametrize(
    ("create_actor", "method", "data", "named"),
    [
        (create_blocker, "nap", [1.5], "nap"),
        (create_slow_starter, "ready", None, "activate"),
        (create_slowly, "nap", [0], "create_actor"),
    ],
)
async def test_a_blocked_event_loop_is_reported_once_with_its_actor(
    caplog: pytest.LogCaptureFixture,
    create_actor: Callable[[str, towtruck.Client], object],
    method: str,
    data: object,
    named: str,
) -> None:
    caplog.set_level(logging.INFO, logger="towtruck")

    def said(text: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    with trio.fail_after(20):
        async with towtruck.open_runtime(create_actor, blocked_warning=0.5) as rt:
            await rt.client.invoke("b1", method, data)

            async def unblocked() -> bool:  # the watchdog's thread says it: poll
                return bool(said("unblocked after"))

            await wait_until(unblocked)
            await rt.client.invoke("b1", method, data and [0.01])  # too short to tell
    # (Only the lines naming b1 count: a loaded machine may starve the loop elsewhere.)
    [warning] = said(f"{BLOCKED}: actor 'b1' method '{named}' has held it for")
    assert "time.sleep(" in warning, "the stack shows the blocking line"
    [unblocked] = said(f"(actor 'b1' method '{named}')")
    assert unblocked.startswith("the event loop is unblocked after")


async def test_the_watchdog_stays_quiet_on_a_virtual_clock(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(120):
        async with towtruck.open_runtime(create_blocker, blocked_warning=0.2) as rt:
            await trio.sleep(100)
            assert await rt.client.invoke("b1", "nap", [0.3]) == "napped"
    assert not [r for r in caplog.records if BLOCKED in r.getMessage()]


@pytest.mark.subprocess
async def test_a_stopped_and_resumed_process_is_not_taken_for_a_blocked_loop(
    http: httpx.AsyncClient,
) -> None:
    """SIGSTOP stops the watchdog's thread too; resumed, it may look before the loop
    has run again. Neither a loop waiting for I/O nor a short turn that the stop caught
    held the loop for the length of the stop."""
    argv = [*towtruck_command(), "serve", "tests.actors:create_blocker", "--port", "0"]
    argv += ["--blocked-warning", "0.5"]
    with trio.fail_after(PROCESS_SECONDS):
        async with running(argv, ready=SERVING) as (process, match, output):
            url = match.group(1)
            for n in range(3):
                process.send_signal(signal.SIGSTOP)
                await trio.sleep(1)  # the stop itself
                process.send_signal(signal.SIGCONT)
                assert (await http.get(f"{url}/invoke/a/nap/0")).json() == "napped"
                async with trio.open_nursery() as nursery:  # a 0.2 s turn, stopped within
                    nursery.start_soon(http.get, f"{url}/invoke/n{n}/told_nap/0.2")
                    await output.wait_for(f"napping n{n}")
                    process.send_signal(signal.SIGSTOP)
                    await trio.sleep(1)
                    process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            await process.wait()
    assert BLOCKED not in output.text, output.text
