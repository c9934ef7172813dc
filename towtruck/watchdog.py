"""The event loop's watchdog: it names the actor whose turn holds the loop.

trio runs every task of a node on one thread, so a turn that blocks (``time.sleep``, a
blocking socket or database call, a long computation in a plain ``def`` method) stops
every other call, the heartbeats and the HTTP server with it. :func:`watch_event_loop`
notices and says which actor and method hold the loop:

- a task of the node ticks a few times a second: it writes the time of trio's clock
  into a slot;
- a daemon thread wakes as often and reads the slot against the same clock. When the
  loop is ``threshold`` late for its tick, the thread takes the loop thread's stack
  (``sys._current_frames()``), finds the actor's turn in it, and logs one warning with
  the actor, the method and the innermost frames of its code; when the loop ticks
  again, it logs how long the loop was held. One warning per blocked episode.

Alternatives, and why they lost: a trio ``Instrument`` (``before_task_step`` and
``after_task_step``) would time every step exactly, but it runs on every step of every
task, the ``/invoke`` hot path included, while the ticking task costs a few wake-ups a
second and nothing per call. ``faulthandler.dump_traceback_later`` prints raw stacks of
every thread to a file descriptor, names no actor, and must be re-armed from the loop.

Finding the turn relies on private names of :mod:`towtruck.activation` and
:mod:`towtruck.catalog` (the functions that run a turn, and their locals ``self``,
``method`` and ``actor_id``). Only this module knows them, and
``tests/test_watchdog.py`` fails if they change.
"""

from __future__ import annotations

import linecache
import logging
import os
import sys
import threading
from types import FrameType
from typing import Final

import trio

from .activation import Activation
from .catalog import Catalog

__all__ = ["watch_event_loop"]

logger = logging.getLogger("towtruck")

#: The longest pause between two ticks of the loop, in seconds.
_MAX_TICK: Final = 0.25
#: How many frames of the blocking code the warning shows, innermost last.
_FRAMES: Final = 6
_ADVICE: Final = (
    "blocking code in a plain def or a blocking call in an async def;"
    " run blocking work with trio.to_thread.run_sync"
)


#: The functions a turn runs in: a call's method, ``activate``, ``deactivate``, and
#: ``create_actor`` (called while the catalog activates ``actor_id``).
_EXECUTE: Final = Activation._execute.__code__
_HOOKS: Final = {
    Activation._activate.__code__: "activate",
    Activation._deactivate.__code__: "deactivate",
}
_CREATE: Final = Catalog._activate.__code__


def _turn(frame: FrameType) -> tuple[object, object] | None:
    """The actor and method of the turn ``frame`` runs, if it runs one."""
    code = frame.f_code
    if code is _EXECUTE:
        local = frame.f_locals
        return getattr(local.get("self"), "id", None), getattr(local.get("method"), "name", None)
    if code in _HOOKS:
        return getattr(frame.f_locals.get("self"), "id", None), _HOOKS[code]
    if code is _CREATE:
        return frame.f_locals.get("actor_id"), "create_actor"
    return None


async def watch_event_loop(
    threshold: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Watch the event loop this task runs on until cancelled, logging any stretch of
    ``threshold`` seconds or more in which it does not run (see the module's docstring).

    Use as ``await nursery.start(watch_event_loop, threshold)``, beside the tasks it
    watches: it reports started once the watch is on. Cancelling it stops the watch
    (its thread ends within a tick). On a virtual clock (``trio.testing.MockClock``)
    it returns at once: there is no real time to watch.
    """
    clock = trio.lowlevel.current_clock()
    # trio.testing is imported only if a MockClock may exist (it imports pytest).
    testing = sys.modules.get("trio.testing")
    if testing is not None and isinstance(clock, testing.MockClock):
        task_status.started()
        return
    tick = min(threshold / 4, _MAX_TICK)
    watchdog = _Watchdog(clock, threshold, tick)
    watchdog.start()
    task_status.started()
    try:
        while True:
            watchdog.beat = clock.current_time()
            await trio.sleep(tick)
    finally:
        watchdog.stopped.set()


class _Watchdog(threading.Thread):
    """The thread that reads the loop's ticks and reports when they stop."""

    def __init__(self, clock: trio.abc.Clock, threshold: float, tick: float) -> None:
        super().__init__(name="towtruck watchdog", daemon=True)
        self.clock = clock
        self.threshold = threshold
        self.tick = tick
        self.loop_thread = threading.get_ident()
        #: When the loop last ticked, on ``clock``; written by the loop only.
        self.beat = clock.current_time()
        self.stopped = threading.Event()

    def run(self) -> None:
        blocked_since: float | None = None  # the beat the warning was about
        turn = ""
        woke = self.clock.current_time()
        excused = woke  # the end of the last stretch in which this thread did not run
        while not self.stopped.wait(self.tick):
            now = self.clock.current_time()
            if now - woke > self.tick + self.threshold / 2:
                # This thread did not run either: the whole process was stopped (SIGSTOP,
                # a frozen VM), and nothing held the loop meanwhile.
                excused = now
            woke = now
            beat = self.beat
            if blocked_since is not None:
                if beat != blocked_since:  # it ran again
                    held = beat - blocked_since - self.tick
                    logger.warning("the event loop is unblocked after %.1f s%s", held, turn)
                    blocked_since = None
                continue
            # The loop was due to tick at beat + tick; it has been held since then.
            held = now - max(beat, excused) - self.tick
            if held >= self.threshold and not self._waiting_for_io():
                blocked_since = beat
                try:
                    turn = self._report(held)
                except Exception:  # reading another thread's stack: never fail for it
                    logger.exception("the event loop is blocked for %.1f s", held)
                    turn = ""

    def _waiting_for_io(self) -> bool:
        """Whether the loop thread waits for I/O in trio's scheduler: then it is not
        held, only not woken yet (the whole process was stopped, say, and resumed)."""
        frame = sys._current_frames().get(self.loop_thread)
        module = str(frame.f_globals.get("__name__", "")) if frame is not None else ""
        return module.startswith("trio._core._io_")

    def _report(self, held: float) -> str:
        """Log the warning for a loop held ``held`` seconds so far; return the turn it
        names (`` (actor 'x' method 'y')``, or nothing) for the unblocked message."""
        frame = sys._current_frames().get(self.loop_thread)
        stack: list[FrameType] = []  # innermost first
        while frame is not None:
            stack.append(frame)
            frame = frame.f_back
        for depth, frame in enumerate(stack):
            turn = _turn(frame)
            if turn is not None:
                actor, method = turn
                logger.warning(
                    "the event loop is blocked: actor %r method %r has held it for %.1f s (%s)%s",
                    actor,
                    method,
                    held,
                    _ADVICE,
                    _format(stack[:depth]),
                )
                return f" (actor {actor!r} method {method!r})"
        logger.warning(
            "the event loop is blocked: code outside any actor's turn has held it for"
            " %.1f s (%s)%s",
            held,
            _ADVICE,
            _format(stack),
        )
        return ""


def _format(stack: list[FrameType]) -> str:
    """The innermost frames of ``stack`` (innermost first) outside towtruck, as a
    traceback shows them (innermost last)."""
    package = os.path.dirname(__file__) + os.sep
    frames = [f for f in stack if not f.f_code.co_filename.startswith(package)][:_FRAMES]
    lines = ["\n  the blocking code, innermost last:"]
    for frame in reversed(frames):
        code = frame.f_code
        lines.append(f'\n    File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        source = linecache.getline(code.co_filename, frame.f_lineno).strip()
        if source:
            lines.append(f"\n      {source}")
    return "".join(lines) if frames else ""
