"""A store in PostgreSQL: ``postgresql://user:password@host:port/db``.

Three tables, created on the first operation that reaches the server (and the one a
database made by an older version lacks, then)::

    towtruck_actors (id, epoch)                   one row per claimed actor
    towtruck_states (actor, name, version, value)  one row per state; etag = version
    towtruck_reminders (actor, name, bucket, due, period, data, generation)
                                                   one row per reminder, indexed by
                                                   (bucket, due) for the due ones

Times are ``double precision``, so a reminder's ``due`` comes back the very float it
was, and marking a tick done compares it for equality.

Values are ``bytea``, so a JSON document keeps every byte (``jsonb`` would reorder
keys and round big integers). Ids are ``COLLATE "C"``: :meth:`~Store.ids` pages in
code point order, as Python sorts ``str``, whatever the database's locale.

The connections are a :class:`~towtruck.storage.postgres_pool.PostgresPool`: psycopg's
sync API in worker threads, every wait bounded by ``timeout``, and a thread that reached
the database never abandoned, so a cancelled call's transaction has committed or rolled
back before the cancellation is delivered. Opening connects nothing; a server that is
down makes each operation fail with :class:`~towtruck.errors.StoreUnavailable`, and the
pool keeps trying to reconnect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg

from ..errors import SettingsError
from ..settings import redact_url
from .base import Claim, ReminderRow, Store, Stored, conflict
from .postgres_pool import Connection, PostgresPool

__all__ = ["PostgresStore"]

_TABLES = ("towtruck_actors", "towtruck_states", "towtruck_reminders")
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS towtruck_actors (
    id text COLLATE "C" PRIMARY KEY,
    epoch bigint NOT NULL
)
""",
    """
CREATE TABLE IF NOT EXISTS towtruck_states (
    actor text COLLATE "C" NOT NULL,
    name text NOT NULL,
    version bigint NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (actor, name)
)
""",
    """
CREATE TABLE IF NOT EXISTS towtruck_reminders (
    actor text COLLATE "C" NOT NULL,
    name text NOT NULL,
    bucket int NOT NULL,
    due double precision NOT NULL,
    period double precision,
    data bytea NOT NULL,
    generation bigint NOT NULL,
    PRIMARY KEY (actor, name)
)
""",
    "CREATE INDEX IF NOT EXISTS towtruck_reminders_due ON towtruck_reminders (bucket, due)",
)
_CLAIM = """
INSERT INTO towtruck_actors (id, epoch) VALUES (%s, 1)
ON CONFLICT (id) DO UPDATE SET epoch = towtruck_actors.epoch + 1
"""
_READ = """
SELECT a.epoch, s.name, s.version, s.value FROM towtruck_actors a
LEFT JOIN towtruck_states s ON s.actor = a.id WHERE a.id = %s
"""
_FENCE = "SELECT epoch FROM towtruck_actors WHERE id = %s FOR SHARE"
_CREATE = """
INSERT INTO towtruck_states (actor, name, version, value) VALUES (%s, %s, 1, %s)
ON CONFLICT (actor, name) DO NOTHING RETURNING version
"""
_REPLACE = """
UPDATE towtruck_states SET version = version + 1, value = %s
WHERE actor = %s AND name = %s AND version::text = %s RETURNING version
"""
_EXISTS = "SELECT 1 FROM towtruck_states WHERE actor = %s AND name = %s"
_DELETE = "DELETE FROM towtruck_states WHERE actor = %s AND name = %s AND version::text = %s"
_FIRST_IDS = "SELECT id FROM towtruck_actors ORDER BY id LIMIT %s"
_NEXT_IDS = "SELECT id FROM towtruck_actors WHERE id > %s ORDER BY id LIMIT %s"
_REMINDER_COLUMNS = "actor, name, due, period, data, generation"
_SET_REMINDER = """
INSERT INTO towtruck_reminders (actor, name, bucket, due, period, data, generation)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (actor, name) DO UPDATE SET
bucket = excluded.bucket, due = excluded.due, period = excluded.period,
data = excluded.data, generation = excluded.generation
"""
_FORGET_REMINDER = "DELETE FROM towtruck_reminders WHERE actor = %s AND name = %s"
_REMINDERS = f"SELECT {_REMINDER_COLUMNS} FROM towtruck_reminders WHERE actor = %s"
_REMINDER = _REMINDERS + " AND name = %s"
# One index range per bucket, each cut to the limit (the planner cannot merge the
# ranges of `bucket = ANY(...)` in order of due, so it would read and sort every due
# row of the buckets).
_DUE_REMINDERS = f"""
SELECT {_REMINDER_COLUMNS} FROM unnest(%s::int[]) AS b (bucket) CROSS JOIN LATERAL (
    SELECT {_REMINDER_COLUMNS} FROM towtruck_reminders t
    WHERE t.bucket = b.bucket AND t.due < %s ORDER BY t.due LIMIT %s
) AS r ORDER BY r.due LIMIT %s
"""
_TICK = " WHERE actor = %s AND name = %s AND generation = %s AND due = %s"
_TICK_LAST = "DELETE FROM towtruck_reminders" + _TICK
_TICK_NEXT = "UPDATE towtruck_reminders SET due = %s" + _TICK


class PostgresStore(Store):
    """Actors' states in PostgreSQL tables, fenced by a row lock on the actor's epoch.

    Open one with :meth:`open` (or :func:`~towtruck.storage.open_store`).
    """

    failures: ClassVar[tuple[type[BaseException], ...]] = (psycopg.Error, OSError)

    def __init__(self, url: str, *, timeout: float, connections: int) -> None:
        super().__init__(timeout=timeout)
        self.url = redact_url(url)
        self._pool = PostgresPool(
            url,
            timeout=timeout,
            connections=connections,
            name="towtruck",
            tables=_TABLES,
            schema=_SCHEMA,
        )

    @classmethod
    async def open(cls, url: str, *, timeout: float, connections: int = 10) -> PostgresStore:  # noqa: ASYNC109 (per operation)
        """A store for the database ``url`` names, with a pool of up to ``connections``
        connections. Connects in the background: a server that is down fails the
        operations, not the opening. A checkpoint.

        Raises:
            SettingsError: ``url`` is not a URL psycopg can read.
        """
        try:
            store = cls(url, timeout=timeout, connections=connections)
        except psycopg.ProgrammingError as exc:  # from PostgresPool
            raise SettingsError(f"{redact_url(url)}: {exc}") from None
        await store._pool.open()
        return store

    async def _claim(self, actor_id: str) -> Claim:
        # Two statements, not one: the SELECT's snapshot is taken after the INSERT has
        # the actor's row lock, so it sees every write that held the lock before (a
        # single statement reads with the snapshot it started with, before waiting).
        def claim(conn: Connection) -> Claim:
            with conn.transaction():
                conn.execute(_CLAIM, (actor_id,))
                return _found(conn.execute(_READ, (actor_id,), binary=True).fetchall())

        return await self._pool.run(claim)

    async def _read(self, actor_id: str) -> Claim:
        def read(conn: Connection) -> Claim:
            return _found(conn.execute(_READ, (actor_id,), binary=True).fetchall())

        return await self._pool.run(read)

    async def _write(
        self, actor_id: str, name: str, value: bytes, epoch: int, etag: str | None
    ) -> str:
        def write(conn: Connection) -> str:
            with conn.transaction():
                _fence(conn, actor_id, name, epoch)
                if etag is None:
                    row = conn.execute(_CREATE, (actor_id, name, value)).fetchone()
                else:
                    row = conn.execute(_REPLACE, (value, actor_id, name, etag)).fetchone()
                if row is None:
                    raise conflict(actor_id, name, epoch, f"its etag is not {etag!r}")
                return str(row[0])

        return await self._pool.run(write)

    async def _clear(self, actor_id: str, name: str, epoch: int, etag: str | None) -> None:
        def clear(conn: Connection) -> None:
            with conn.transaction():
                _fence(conn, actor_id, name, epoch)
                if etag is None:  # nothing to remove, if indeed it does not exist
                    refused = conn.execute(_EXISTS, (actor_id, name)).fetchone() is not None
                else:
                    refused = conn.execute(_DELETE, (actor_id, name, etag)).rowcount == 0
                if refused:
                    raise conflict(actor_id, name, epoch, f"its etag is not {etag!r}")

        await self._pool.run(clear)

    async def _ids(self, after: str | None, limit: int) -> list[str]:
        def ids(conn: Connection) -> list[str]:
            if after is None:
                rows = conn.execute(_FIRST_IDS, (limit,)).fetchall()
            else:
                rows = conn.execute(_NEXT_IDS, (after, limit)).fetchall()
            return [row[0] for row in rows]

        return await self._pool.run(ids)

    async def _set_reminder(self, row: ReminderRow) -> None:
        def set_reminder(conn: Connection) -> None:
            values = (row.actor, row.name, row.bucket, row.due, row.period, row.data)
            conn.execute(_SET_REMINDER, (*values, row.generation))

        await self._pool.run(set_reminder)

    async def _forget_reminder(self, actor_id: str, name: str) -> bool:
        def forget(conn: Connection) -> bool:
            return conn.execute(_FORGET_REMINDER, (actor_id, name)).rowcount == 1

        return await self._pool.run(forget)

    async def _reminders(self, actor_id: str) -> list[ReminderRow]:
        def reminders(conn: Connection) -> list[ReminderRow]:
            return _rows(conn.execute(_REMINDERS, (actor_id,), binary=True).fetchall())

        return await self._pool.run(reminders)

    async def _reminder(self, actor_id: str, name: str) -> ReminderRow | None:
        def reminder(conn: Connection) -> list[ReminderRow]:
            return _rows(conn.execute(_REMINDER, (actor_id, name), binary=True).fetchall())

        found = await self._pool.run(reminder)
        return found[0] if found else None

    async def _due_reminders(
        self, buckets: list[int], before: float, limit: int
    ) -> list[ReminderRow]:
        def due(conn: Connection) -> list[ReminderRow]:
            params = (buckets, before, limit, limit)
            return _rows(conn.execute(_DUE_REMINDERS, params, binary=True).fetchall())

        return await self._pool.run(due)

    async def _reminder_done(
        self, actor_id: str, name: str, generation: int, due: float, next_due: float | None
    ) -> bool:
        def done(conn: Connection) -> bool:
            key = (actor_id, name, generation, due)
            if next_due is None:
                return conn.execute(_TICK_LAST, key).rowcount == 1
            return conn.execute(_TICK_NEXT, (next_due, *key)).rowcount == 1

        return await self._pool.run(done)

    async def aclose(self) -> None:
        """Close the pool's connections and stop its threads. A checkpoint; if
        cancelled, the closing still finishes first."""
        await self._pool.aclose()


# Why a write locks the actor's row first: under READ COMMITTED, a plain SELECT of the
# epoch reads the last committed one, and a claim committing between that SELECT and
# this write's COMMIT would not stop the write, which would land after the claim had
# read the states: a write from an old activation past the fence. FOR SHARE makes the
# two wait for each other instead. A claim (an UPDATE of the row) waits until this
# transaction ends, so its states include this write; a write that comes while a claim
# holds the row waits for the claim to commit, then reads the new epoch and is refused.
def _fence(conn: Connection, actor_id: str, name: str, epoch: int) -> None:
    """Lock the actor's epoch until the transaction ends, and check it is ``epoch``."""
    row = conn.execute(_FENCE, (actor_id,)).fetchone()
    current = 0 if row is None else row[0]
    if current != epoch:
        raise conflict(actor_id, name, epoch, f"the actor's epoch is {current}, not {epoch}")


def _found(rows: Sequence[tuple[Any, ...]]) -> Claim:
    """The claim that rows of ``_READ`` describe (none: an actor never claimed)."""
    if not rows:
        return Claim(0, {})
    states = {
        name: Stored(str(version), value) for _, name, version, value in rows if name is not None
    }
    return Claim(rows[0][0], states)


def _rows(rows: Sequence[tuple[Any, ...]]) -> list[ReminderRow]:
    """The reminders that rows of ``_REMINDER_COLUMNS`` describe."""
    return [
        ReminderRow(actor, name, due, period, bytes(data), generation)
        for actor, name, due, period, data, generation in rows
    ]
