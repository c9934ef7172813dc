"""What a process that runs a node sets up around it: signal handling that works even
while blocking code holds the event loop, the garbage collector's tuning, and logging
to stderr."""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import logging
import os
import signal
import types
from collections.abc import Callable, Iterator
from typing import Any

import trio

__all__ = ["configure_logging", "stop_on_signals", "tune_garbage_collector"]

logger = logging.getLogger("towtruck")


# SIGINT and SIGTERM are handled by a plain Python signal handler rather than trio's
# open_signal_receiver, which delivers them through the event loop: blocking code in
# an actor holds the loop, and a loop that never runs again never sees them. Python
# runs a handler in the main thread between two bytecodes, even inside ``while True:
# pass``, and interrupts ``time.sleep`` for it. The first signal asks the loop to stop
# gracefully (``run_sync_soon`` may be called from a signal handler); the second exits
# at once from the handler itself.
@contextlib.contextmanager
def stop_on_signals(stopping: trio.Event) -> Iterator[None]:
    """For the duration of the block, SIGINT and SIGTERM set ``stopping`` (through the
    loop); a second one, or one after ``stopping`` was set otherwise, exits at once."""
    token = trio.lowlevel.current_trio_token()
    received = 0

    def handle(signum: int, frame: types.FrameType | None) -> None:
        nonlocal received
        received += 1
        name = signal.Signals(signum).name
        if received == 1 and not stopping.is_set():
            _log_in_handler(logging.INFO, "%s: stopping gracefully (again to stop at once)", name)
            token.run_sync_soon(stopping.set)
        else:
            _log_in_handler(logging.WARNING, "%s again: exiting at once", name)
            os._exit(1)

    previous: dict[int, Callable[[int, types.FrameType | None], Any] | int | None] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle)
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _log_in_handler(level: int, message: str, *args: object) -> None:
    # A signal handler runs between two bytecodes of whatever the main thread was doing;
    # if that was a write to the same stream, this write raises RuntimeError (reentrant
    # call). Losing the line is better than raising into that code.
    with contextlib.suppress(Exception):
        logger.log(level, message, *args)


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector's pauses rare, for a process that is a node.

    Python's defaults run a full collection, which visits every live object, every
    few hundred thousand allocations; a node allocates that many in a few seconds and
    keeps two or three objects per idle actor, so with 100,000 actors in memory each
    pause took ~170 ms and set the p99 latency (measured: see benchmarks/RESULTS.md).
    Collecting young objects every 10,000 allocations instead of 700, and older ones
    fifty times less often, brought the p99 to 7 ms. What is alive once the node serves
    (modules, the app) is frozen out of collection altogether. ``towtruck serve`` and
    :func:`towtruck.run` do this; a program embedding a node with
    :func:`towtruck.open_node` decides for itself (calling this is fine).
    """
    gc.set_threshold(10_000, 50, 50)
    gc.collect()
    gc.freeze()


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` (unless the program set up logging already), without
    httpx's line per request between nodes; ``log_format`` ``json`` writes one JSON
    object a line (see :class:`JsonFormatter`). Called again, it changes the level and
    format of the logging it set up."""
    global _logging_configured
    root = logging.getLogger()
    if not _logging_configured and root.handlers:
        return  # the program's own
    if not _logging_configured:
        logging.basicConfig(format=_TEXT_FORMAT)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        _logging_configured = True
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level.upper())


_TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

#: Attributes every log record has: the rest were given with ``extra=`` and are kept.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, ``process``, what was given with ``extra=``, and
    ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_logging_configured = False
