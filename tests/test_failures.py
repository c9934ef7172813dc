"""How actor failures are logged: one line each, the traceback at debug, repeats summed
up (on trio's autojump clock)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import towtruck

DEADLINE = 10_000


def create_failing(id: str, client: towtruck.Client) -> dict[str, Any]:
    def fail(data: Any) -> None:
        raise ValueError("bad input\non two lines")

    def other(data: Any) -> None:
        raise KeyError("missing")

    return {"fail": fail, "other": other}


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("towtruck") and r.levelno == level]


async def test_an_actor_error_is_one_warning_line_with_the_traceback_at_debug(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="towtruck")
    async with towtruck.open_runtime(create_failing) as runtime:
        with trio.fail_after(DEADLINE), pytest.raises(towtruck.ActorError):
            await runtime.client.invoke("a", "fail")
    (warning,) = lines(caplog, logging.WARNING)
    assert warning.exc_info is None
    assert warning.getMessage() == "actor 'a': fail raised ValueError: bad input on two lines"
    (debug,) = [r for r in lines(caplog, logging.DEBUG) if r.exc_info]
    assert debug.exc_info is not None
    assert debug.exc_info[0] is ValueError


async def test_repeated_actor_errors_are_summed_up_instead_of_logged_one_by_one(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="towtruck")
    async with towtruck.open_runtime(create_failing) as runtime:
        with trio.fail_after(DEADLINE):
            for i in range(500):
                with pytest.raises(towtruck.ActorError):
                    await runtime.client.invoke(str(i % 7), "fail")
            with pytest.raises(towtruck.ActorError):
                await runtime.client.invoke("x", "other")  # another kind: its own lines
            first = [r.getMessage() for r in lines(caplog, logging.WARNING)]
            assert len(first) == 11, first
            assert sum("fail raised ValueError" in m for m in first) == 10
            assert sum("other raised KeyError" in m for m in first) == 1
            await trio.sleep(15)  # the window has ended: the rest is summed up in one line
            summary = [r.getMessage() for r in lines(caplog, logging.WARNING)][11:]
            assert summary == ["... and 490 more like it within 10 s: fail raised ValueError"]
            with pytest.raises(towtruck.ActorError):
                await runtime.client.invoke("a", "fail")  # a new window: logged again
            assert len(lines(caplog, logging.WARNING)) == 13
