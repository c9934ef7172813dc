"""When an actor's own code fails: which exceptions are its failures, and how they are
logged.

Whatever actor code raises (``create_actor``, ``activate``, a method, ``deactivate``)
fails that call only, ``SystemExit`` and ``KeyboardInterrupt`` included: a
``sys.exit()`` deep in a library an actor calls must not stop the node. Two things are
not the code's failure and pass through untouched: trio's ``Cancelled`` (the call's
deadline, or the node stopping), and a real Ctrl-C that trio delivers as
``KeyboardInterrupt``.

Telling a real Ctrl-C from a ``KeyboardInterrupt`` the code raised: ``towtruck serve``
and ``towtruck.run`` take SIGINT and SIGTERM with signal receivers, so there no
KeyboardInterrupt ever comes from outside. A program that embeds towtruck under plain
``trio.run`` keeps trio's own SIGINT handling, which raises KeyboardInterrupt in
whatever code runs (an actor's method, as likely as not): at once, from trio's signal
handler, or at the main task's next checkpoint, from trio's scheduler. Either way the
innermost frame of its traceback is trio's, while one raised by the code (or by
Python's default handler, in code trio does not run) has the raising code's frame
there. The alternatives lost: treating every KeyboardInterrupt as a failure of the
call swallows a real Ctrl-C under ``trio.run``; letting every one through lets actor
code stop the node; running actor code with KeyboardInterrupt protection would make a
method stuck in a loop impossible to interrupt. The frame test rests on how trio
raises it, so ``tests/test_activation.py`` runs a real Ctrl-C through both of trio's
paths in a child process.

Logging: each failure is one warning line (actor, method, exception type, message),
and its traceback a debug record. A failure that repeats (a bad deploy, a database
down) would otherwise write a line per call, so each kind, a method and an exception
type, logs at most :data:`LINES_PER_WINDOW` lines in :data:`WINDOW` seconds of trio's
clock; the rest are counted and summed up in one line when the window has passed.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

__all__ = ["LINES_PER_WINDOW", "WINDOW", "FailureLog", "describe", "split"]

#: Lines logged per kind of failure in each window; more are only counted.
LINES_PER_WINDOW: Final = 10
#: Seconds, on trio's clock, over which :data:`LINES_PER_WINDOW` applies.
WINDOW: Final = 10.0
# Longest message quoted in a line, in characters.
_MESSAGE_CHARACTERS: Final = 300


def split(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """Split what actor code raised into what must pass through (trio's cancellation,
    a real Ctrl-C) and the code's own failure; either may be None. An exception group
    is split leaf by leaf."""
    if isinstance(exc, BaseExceptionGroup):
        passing, own = exc.split(_passes)
        if passing is None:
            return None, exc
        if own is None:
            return exc, None
        return passing, own
    if _passes(exc):
        return exc, None
    return None, exc


def describe(exc: BaseException) -> str:
    """What an actor's failure says to its caller: the exception's message, or its
    type's name if it has none; ``sys.exit(3)`` reads ``SystemExit(3)``, not ``3``."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    try:
        return str(exc) or type(exc).__name__
    except Exception:  # a __str__ that fails: the type says enough
        return type(exc).__name__


def _passes(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, KeyboardInterrupt) and _raised_by_trio(exc)


def _raised_by_trio(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module == "trio" or module.startswith("trio.")


class _Window:
    __slots__ = ("logged", "start", "unlogged")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.unlogged = 0


class FailureLog:
    """Logs the failures of a node's actors, at most :data:`LINES_PER_WINDOW` lines of
    each kind per :data:`WINDOW` (see the module's docstring).

    Args:
        logger: Where the lines go.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._windows: dict[tuple[str, str], _Window] = {}

    def failed(self, actor: str, method: str, exc: BaseException) -> None:
        """Log that ``method`` (or ``create_actor``, ``activate``...) of ``actor``
        raised ``exc``. Not a checkpoint."""
        name = type(exc).__name__
        key = (method, name)
        now = trio.current_time()
        window = self._windows.get(key)
        if window is None or now >= window.start + WINDOW:
            if window is not None:
                self._sum_up(key, window)
            window = self._windows[key] = _Window(now)
        if window.logged >= LINES_PER_WINDOW:
            window.unlogged += 1
            return
        window.logged += 1
        self._logger.warning("actor %r: %s raised %s: %s", actor, method, name, _message(exc))
        if self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug("actor %r: %s raised %s", actor, method, name, exc_info=exc)

    def flush(self, *, everything: bool = False) -> None:
        """Sum up the failures left unlogged in windows that have passed (or, with
        ``everything``, in all of them: the node is stopping). Not a checkpoint."""
        now = trio.current_time()
        for key, window in list(self._windows.items()):
            if everything or now >= window.start + WINDOW:
                self._sum_up(key, window)
                del self._windows[key]

    async def flush_periodically(self) -> None:
        """Run :meth:`flush` every :data:`WINDOW` seconds, until cancelled."""
        while True:
            await trio.sleep(WINDOW)
            self.flush()

    def _sum_up(self, key: tuple[str, str], window: _Window) -> None:
        if window.unlogged:
            self._logger.warning(
                "... and %d more like it within %g s: %s raised %s",
                window.unlogged,
                WINDOW,
                *key,
            )


def _message(exc: BaseException) -> str:
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a __str__ that fails: the type says enough
        return "(no message)"
    if len(text) > _MESSAGE_CHARACTERS:
        return f"{text[:_MESSAGE_CHARACTERS]}..."
    return text or "(no message)"
