"""Actors' states in an SQLite file: the default store of a node.

One worker thread of the store's own owns the connection (WAL, ``synchronous=NORMAL``)
and commits in groups: whatever operations wait when it finishes a transaction all go
into the next one, so a hundred actors writing at once cost one commit, not a hundred
thread hops and a hundred commits. Each operation's checks (epoch, etag) run inside
that transaction, one after the other, so fencing holds as if each ran alone; an
operation refused changes nothing, and an error of SQLite's fails the whole group.

Several processes may share the file (the workers of ``--workers``): each
transaction begins ``IMMEDIATE``, taking SQLite's write lock, and waits for it up to
the store's timeout.

A task waiting on an operation sleeps until the thread wakes it through trio's
token. If it is cancelled before the thread has taken the operation, the thread skips
it (it did not happen); once taken, the cancellation waits until the operation is done
(SQLite's lock wait bounds it), so a cancelled write either committed or did not, the
task knows which, and nothing is torn. An operation that waited longer than the
store's timeout for the thread fails unbegun.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Final

import trio

from ..errors import StateConflict
from .base import Claim, ReminderRow, Store, Stored, conflict

__all__ = ["SQLiteStore"]

#: Most operations committed in one transaction.
_GROUP: Final = 1000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS towtruck_actors (
    id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS towtruck_reminders (
    actor TEXT NOT NULL,
    name TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    due REAL NOT NULL,
    period REAL,
    data BLOB NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (actor, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS towtruck_reminders_due ON towtruck_reminders (bucket, due);
CREATE TABLE IF NOT EXISTS towtruck_states (
    actor TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (actor, name)
) WITHOUT ROWID;
"""


_CREATE: Final = """
INSERT INTO towtruck_states (actor, name, version, value)
SELECT ?, ?, 1, ? WHERE (SELECT epoch FROM towtruck_actors WHERE id = ?) = ?
ON CONFLICT (actor, name) DO NOTHING
"""
_REPLACE: Final = """
UPDATE towtruck_states SET version = version + 1, value = ?
WHERE actor = ? AND name = ? AND version = ?
AND (SELECT epoch FROM towtruck_actors WHERE id = ?) = ?
"""
_FENCE: Final = """
SELECT a.epoch, s.version FROM towtruck_actors a
LEFT JOIN towtruck_states s ON s.actor = a.id AND s.name = ?
WHERE a.id = ?
"""


class _Operation:
    """One call of the store, handed to its thread."""

    __slots__ = ("abandoned", "args", "error", "queued", "result", "run", "taken", "task")

    def __init__(self, run: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.run = run
        self.args = args
        self.task = trio.lowlevel.current_task()  # woken when it is done
        self.queued = time.monotonic()
        self.taken = False  # the thread has it: it will finish, and wake the task
        self.abandoned = False  # its task gave up before that: the thread skips it
        self.result: Any = None
        self.error: BaseException | None = None


class SQLiteStore(Store):
    """Actors' states in one SQLite file (see the module)."""

    failures: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.Error, OSError)

    def __init__(self, path: str, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.path = path
        self.url = f"sqlite:///{path}"
        self._queue: queue.SimpleQueue[_Operation | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards taken/abandoned between the two sides
        self._token = trio.lowlevel.current_trio_token()
        self._thread: threading.Thread | None = None

    @classmethod
    async def open(cls, path: str, *, timeout: float) -> SQLiteStore:  # noqa: ASYNC109 (per operation)
        """Open (creating if need be) the file at ``path`` and start the store's thread."""
        store = cls(path, timeout=timeout)
        ready: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        store._thread = threading.Thread(
            target=store._serve, args=(ready,), name=f"towtruck-sqlite {path}", daemon=True
        )
        store._thread.start()
        failed = await trio.to_thread.run_sync(ready.get)
        if failed is not None:
            store._thread.join()
            raise store._unavailable("open", "", failed) from failed
        return store

    async def aclose(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await trio.to_thread.run_sync(self._thread.join)
            self._thread = None

    # The trio side.

    async def _claim(self, actor_id: str) -> Claim:
        result: Claim = await self._submit(_claim, actor_id)
        return result

    async def _read(self, actor_id: str) -> Claim:
        result: Claim = await self._submit(_read, actor_id)
        return result

    async def _write(
        self, actor_id: str, name: str, value: bytes, epoch: int, etag: str | None
    ) -> str:
        result: str = await self._submit(_write, actor_id, name, value, epoch, etag)
        return result

    async def _clear(self, actor_id: str, name: str, epoch: int, etag: str | None) -> None:
        await self._submit(_clear, actor_id, name, epoch, etag)

    async def _ids(self, after: str | None, limit: int) -> list[str]:
        result: list[str] = await self._submit(_ids, after, limit)
        return result

    async def _set_reminder(self, row: ReminderRow) -> None:
        await self._submit(_set_reminder, row)

    async def _forget_reminder(self, actor_id: str, name: str) -> bool:
        result: bool = await self._submit(_forget_reminder, actor_id, name)
        return result

    async def _reminders(self, actor_id: str) -> list[ReminderRow]:
        result: list[ReminderRow] = await self._submit(_reminders, actor_id, None)
        return result

    async def _reminder(self, actor_id: str, name: str) -> ReminderRow | None:
        found: list[ReminderRow] = await self._submit(_reminders, actor_id, name)
        return found[0] if found else None

    async def _due_reminders(
        self, buckets: list[int], before: float, limit: int
    ) -> list[ReminderRow]:
        result: list[ReminderRow] = await self._submit(_due_reminders, buckets, before, limit)
        return result

    async def _reminder_done(
        self, actor_id: str, name: str, generation: int, due: float, next_due: float | None
    ) -> bool:
        result: bool = await self._submit(_reminder_done, actor_id, name, generation, due, next_due)
        return result

    async def _submit(self, run: Callable[..., Any], *args: Any) -> Any:
        if self._thread is None:
            raise sqlite3.ProgrammingError("the store is closed")
        operation = _Operation(run, args)
        self._queue.put(operation)

        def abort(_: Any) -> trio.lowlevel.Abort:
            with self._lock:  # skipped if the thread has not taken it; else finished
                if operation.taken:
                    return trio.lowlevel.Abort.FAILED
                operation.abandoned = True
                return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if operation.error is not None:
            raise operation.error
        return operation.result

    # The thread's side.

    def _serve(self, ready: queue.SimpleQueue[BaseException | None]) -> None:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException as exc:
            ready.put(exc)
            return
        ready.put(None)
        try:
            while (first := self._queue.get()) is not None:
                group = [first]
                stopping = False
                while len(group) < _GROUP:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                        break
                    group.append(more)
                self._commit(db, group)
                if stopping:
                    break
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, group: list[_Operation]) -> None:
        stale = time.monotonic() - self.timeout
        with self._lock:
            group = [op for op in group if not op.abandoned]
            for op in group:
                op.taken = True
        if not group:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in group:
                if op.queued < stale:  # waited too long for its turn: not begun
                    op.error = TimeoutError(f"not begun within {self.timeout} s")
                    continue
                try:
                    op.result = op.run(db, *op.args)
                except StateConflict as exc:  # refused before it changed anything
                    op.error = exc
            db.execute("COMMIT")
        except Exception as exc:  # every operation of the group fails with it
            if db.in_transaction:
                db.execute("ROLLBACK")
            for op in group:
                op.result, op.error = None, exc
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(_deliver, group)


def _deliver(group: list[_Operation]) -> None:
    for op in group:
        trio.lowlevel.reschedule(op.task)


# The operations, run in the store's thread inside a transaction.


def _claim(db: sqlite3.Connection, actor_id: str) -> Claim:
    db.execute(
        "INSERT INTO towtruck_actors (id, epoch) VALUES (?, 1)"
        " ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1",
        (actor_id,),
    )
    return _read(db, actor_id)


def _read(db: sqlite3.Connection, actor_id: str) -> Claim:
    row = db.execute("SELECT epoch FROM towtruck_actors WHERE id = ?", (actor_id,)).fetchone()
    rows = db.execute(
        "SELECT name, version, value FROM towtruck_states WHERE actor = ?", (actor_id,)
    )
    return Claim(
        0 if row is None else row[0],
        {name: Stored(str(version), bytes(value)) for name, version, value in rows},
    )


def _fence(db: sqlite3.Connection, actor_id: str, name: str, epoch: int, etag: str | None) -> int:
    """The state's version (0 if absent), if ``epoch`` and ``etag`` are current."""
    row = db.execute(_FENCE, (name, actor_id)).fetchone()
    current, version = (0, None) if row is None else row
    if current != epoch:
        raise conflict(actor_id, name, epoch, f"the actor's epoch is {current}, not {epoch}")
    if (None if version is None else str(version)) != etag:
        raise conflict(actor_id, name, epoch, f"its etag is not {etag!r}")
    return 0 if version is None else int(version)


def _write(
    db: sqlite3.Connection, actor_id: str, name: str, value: bytes, epoch: int, etag: str | None
) -> str:
    # One statement when the fence holds (the usual case); when it changes nothing,
    # _fence says why.
    if etag is None:
        version = 1
        changed = db.execute(_CREATE, (actor_id, name, value, actor_id, epoch)).rowcount
    elif etag.isdigit():
        version = int(etag) + 1
        changed = db.execute(_REPLACE, (value, actor_id, name, int(etag), actor_id, epoch)).rowcount
    else:
        changed = 0
    if changed != 1:
        _fence(db, actor_id, name, epoch, etag)
        raise conflict(actor_id, name, epoch, "the store changed under it")  # pragma: no cover
    return str(version)


def _clear(db: sqlite3.Connection, actor_id: str, name: str, epoch: int, etag: str | None) -> None:
    _fence(db, actor_id, name, epoch, etag)
    db.execute("DELETE FROM towtruck_states WHERE actor = ? AND name = ?", (actor_id, name))


def _ids(db: sqlite3.Connection, after: str | None, limit: int) -> list[str]:
    rows = db.execute(
        "SELECT id FROM towtruck_actors WHERE id > ? ORDER BY id LIMIT ?", (after or "", limit)
    )
    return [row[0] for row in rows]


_REMINDER_COLUMNS: Final = "actor, name, due, period, data, generation"


def _row(found: tuple[Any, ...]) -> ReminderRow:
    actor, name, due, period, data, generation = found
    return ReminderRow(actor, name, due, period, bytes(data), generation)


def _set_reminder(db: sqlite3.Connection, row: ReminderRow) -> None:
    db.execute(
        "INSERT OR REPLACE INTO towtruck_reminders"
        " (actor, name, bucket, due, period, data, generation) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row.actor, row.name, row.bucket, row.due, row.period, row.data, row.generation),
    )


def _forget_reminder(db: sqlite3.Connection, actor_id: str, name: str) -> bool:
    deleted = db.execute(
        "DELETE FROM towtruck_reminders WHERE actor = ? AND name = ?", (actor_id, name)
    )
    return deleted.rowcount == 1


def _reminders(db: sqlite3.Connection, actor_id: str, name: str | None) -> list[ReminderRow]:
    if name is None:
        rows = db.execute(
            f"SELECT {_REMINDER_COLUMNS} FROM towtruck_reminders WHERE actor = ?", (actor_id,)
        )
    else:
        rows = db.execute(
            f"SELECT {_REMINDER_COLUMNS} FROM towtruck_reminders WHERE actor = ? AND name = ?",
            (actor_id, name),
        )
    return [_row(found) for found in rows]


def _due_reminders(
    db: sqlite3.Connection, buckets: list[int], before: float, limit: int
) -> list[ReminderRow]:
    due: list[ReminderRow] = []
    for bucket in buckets:  # one index range each
        rows = db.execute(
            f"SELECT {_REMINDER_COLUMNS} FROM towtruck_reminders"
            " WHERE bucket = ? AND due < ? ORDER BY due LIMIT ?",
            (bucket, before, limit),
        )
        due += (_row(found) for found in rows)
    return due


def _reminder_done(
    db: sqlite3.Connection,
    actor_id: str,
    name: str,
    generation: int,
    due: float,
    next_due: float | None,
) -> bool:
    where = " WHERE actor = ? AND name = ? AND generation = ? AND due = ?"
    key = (actor_id, name, generation, due)
    if next_due is None:
        done = db.execute("DELETE FROM towtruck_reminders" + where, key)
    else:
        done = db.execute("UPDATE towtruck_reminders SET due = ?" + where, (next_due, *key))
    return done.rowcount == 1
