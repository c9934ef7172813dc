"""A pool of PostgreSQL connections for towtruck's PostgreSQL backends: the state store
(:mod:`towtruck.storage.postgres`) and the membership table
(:mod:`towtruck.cluster.table.postgres`).

psycopg's async API runs only on asyncio, so :class:`PostgresPool` uses its sync API in
worker threads, at most one per pooled connection. Every wait is bounded by
``timeout``: a free connection, connecting (``connect_timeout``), a statement and a row
lock (``statement_timeout``, ``lock_timeout``), a transaction left open
(``idle_in_transaction_session_timeout``), and a dead peer (``tcp_user_timeout``,
keepalives). A thread that reached the database is never abandoned: a cancelled call
waits for it, so its transaction has committed or rolled back before the cancellation
is delivered. Opening connects nothing; a server that is down makes each call fail, and
the pool keeps trying to reconnect.

The first call that reaches the server creates the user's tables if any is missing
(:meth:`PostgresPool.run`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

__all__ = ["Connection", "PostgresPool"]

T = TypeVar("T")

#: A pooled connection, as :meth:`PostgresPool.run` lends it (autocommit, rows as tuples).
Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]

# Tables are created only if missing, so a role without the right to create tables can
# use tables made for it. An advisory lock serialises creating them: concurrent CREATE
# TABLE IF NOT EXISTS can fail on PostgreSQL's catalog (a unique violation on pg_type)
# when several nodes start at once. Every user of this pool takes the same key, so the
# state store and the membership table never create tables side by side either.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('towtruck_schema'))"


class PostgresPool:
    """Connections to one database, lent to work in worker threads (see the module).

    Args:
        conninfo: A libpq connection string or URL. Its ``application_name`` (default
            ``towtruck``) and ``options`` are kept, the waits added to ``options``.
        timeout: Seconds each wait may take (see the module).
        connections: The most connections, and so worker threads, at once.
        name: The pool's name, in psycopg's log.
        tables: The tables the work needs; if any is missing, ``schema`` runs.
        schema: Statements that create ``tables`` (each ``IF NOT EXISTS``), run in one
            transaction under the advisory lock.

    Raises:
        psycopg.ProgrammingError: ``conninfo`` is not one psycopg can read.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        timeout: float,
        connections: int,
        name: str,
        tables: Sequence[str],
        schema: Sequence[str],
    ) -> None:
        self.timeout = timeout
        self._missing = "SELECT " + " OR ".join(["to_regclass(%s) IS NULL"] * len(tables))
        self._tables = tuple(tables)
        self._schema = tuple(schema)
        milliseconds = max(1, round(timeout * 1000))
        params = conninfo_to_dict(conninfo)
        waits = " ".join(
            f"-c {setting}={milliseconds}"
            for setting in (
                "statement_timeout",
                "lock_timeout",
                "idle_in_transaction_session_timeout",
            )
        )
        self._pool = ConnectionPool(
            conninfo,
            kwargs={
                "autocommit": True,  # transactions are explicit; a read is one round trip
                "application_name": params.get("application_name", "towtruck"),
                "options": f"{params.get('options', '')} {waits}".strip(),
                "connect_timeout": max(2, math.ceil(timeout)),  # libpq's minimum is 2 s
                "tcp_user_timeout": milliseconds,
                "keepalives_idle": max(1, math.ceil(timeout)),
                "keepalives_interval": 1,
            },
            min_size=1,
            max_size=connections,
            timeout=timeout,
            open=False,
            name=name,
        )
        # One worker thread per connection: callers beyond that wait in trio, where a
        # cancellation or the timeout can still reach them, rather than in threads.
        self._threads = trio.CapacityLimiter(connections)
        self._ready = False  # the tables exist (checked once per pool)

    async def open(self) -> None:
        """Start the pool's threads, which connect in the background. A checkpoint."""
        await trio.to_thread.run_sync(self._pool.open)

    async def aclose(self) -> None:
        """Close the pool's connections and stop its threads. A checkpoint; if
        cancelled, the closing still finishes first."""
        await trio.to_thread.run_sync(lambda: self._pool.close(timeout=self.timeout))

    async def run(self, work: Callable[[Connection], T]) -> T:
        """``work`` done with a pooled connection in a worker thread, once the tables
        exist. A checkpoint. Cancelled or out of time only while waiting for a thread:
        once it runs, it runs to the end, and an exception from it rolls back any
        transaction it left open.

        Raises:
            PoolTimeout: no thread or connection was free within ``timeout``.
            psycopg.Error: the database refused the work, or could not be reached.
        """
        with trio.move_on_after(self.timeout):
            return await trio.to_thread.run_sync(self._connected, work, limiter=self._threads)
        raise PoolTimeout(f"no connection was free within {self.timeout} s")

    def _connected(self, work: Callable[[Connection], T]) -> T:
        # On an exception the pool rolls back any transaction still open, and replaces
        # a connection that broke, so each connection goes back clean.
        with self._pool.connection() as conn:
            if not self._ready:
                if conn.execute(self._missing, self._tables).fetchone() != (False,):
                    with conn.transaction():
                        conn.execute(_SCHEMA_LOCK)
                        for statement in self._schema:
                            conn.execute(statement)
                self._ready = True
            return work(conn)
