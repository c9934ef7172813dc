"""A membership table in PostgreSQL: ``postgresql://user@host:port/db?cluster=NAME``.

``cluster`` (default ``towtruck``) lets several clusters share one database; it is
taken out of the URL before the rest goes to libpq. Two tables, created on the first
operation that reaches the server if they are missing::

    towtruck_members (cluster, address, generation, status, alive, votes, changed)
                                            one row per node generation, never deleted
    towtruck_membership_versions (cluster, version)
                                            one row per cluster: the table's version

Times are ``double precision`` and votes a ``jsonb`` object of voter to time, written
from Python's own JSON (a ``float8`` cast to ``jsonb`` keeps only 15 digits), so each
time comes back the very float it was.

Every change of status locks the cluster's version row first, by moving it on, then
changes the rows, in one transaction: status changes of a cluster take turns, and
always take their locks in the same order, so they cannot deadlock.

The connections are a :class:`~towtruck.storage.postgres_pool.PostgresPool`, as the
state store's are: psycopg's sync API in worker threads, every wait bounded by
``timeout``, a thread that reached the database never abandoned, and opening connects
nothing (a server that is down fails the operations, as
:class:`~towtruck.errors.StoreUnavailable`, and the pool keeps reconnecting).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Jsonb

from ...errors import SettingsError
from ...settings import redact_url
from ...storage.postgres_pool import Connection, PostgresPool
from .base import MembershipTable, Row, Status, Table

__all__ = ["DEFAULT_CLUSTER", "PostgresTable"]

#: The cluster a URL without ``?cluster=`` names.
DEFAULT_CLUSTER: Final = "towtruck"

_TABLES = ("towtruck_members", "towtruck_membership_versions")
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS towtruck_members (
    cluster text NOT NULL,
    address text NOT NULL,
    generation bigint NOT NULL,
    status text NOT NULL CHECK (status IN ('joining', 'active', 'leaving', 'dead')),
    alive double precision NOT NULL,
    votes jsonb NOT NULL DEFAULT '{}',
    changed double precision NOT NULL,
    PRIMARY KEY (cluster, address, generation)
)
""",
    """
CREATE TABLE IF NOT EXISTS towtruck_membership_versions (
    cluster text PRIMARY KEY,
    version bigint NOT NULL
)
""",
)
_COLUMNS = "address, generation, status, alive, votes, changed"
# One statement, so one snapshot: the version and the rows it stands for. The left
# joins give one row of NULLs for a cluster with no rows yet (version 0).
_READ = """
SELECT v.version, m.address, m.generation, m.status, m.alive, m.votes, m.changed
FROM (SELECT %s::text AS cluster) c
LEFT JOIN towtruck_membership_versions v ON v.cluster = c.cluster
LEFT JOIN towtruck_members m ON m.cluster = c.cluster
"""
# The first statement of every change of status: it takes the version row's lock.
_MOVE_ON = """
INSERT INTO towtruck_membership_versions AS v (cluster, version) VALUES (%s, 1)
ON CONFLICT (cluster) DO UPDATE SET version = v.version + 1
"""
_MOVE_ON_FROM = """
UPDATE towtruck_membership_versions SET version = version + 1
WHERE cluster = %s AND version = %s
"""
_KEY = " WHERE cluster = %s AND address = %s AND generation = %s"
_SUPERSEDE = """
UPDATE towtruck_members SET status = 'dead', changed = %s
WHERE cluster = %s AND address = %s AND generation < %s AND status <> 'dead'
"""
_JOIN = """
INSERT INTO towtruck_members (cluster, address, generation, status, alive, votes, changed)
VALUES (%s, %s, %s, 'joining', %s, '{}', %s) ON CONFLICT (cluster, address, generation)
DO UPDATE SET status = 'joining', alive = excluded.alive, votes = '{}',
changed = excluded.changed
"""
_SET_STATUS = "UPDATE towtruck_members SET status = %s, changed = %s" + _KEY
_UNLESS_DEAD = " AND status <> 'dead'"
_ALIVE = "UPDATE towtruck_members SET alive = %s" + _KEY
_VOTE = f"UPDATE towtruck_members SET votes = votes || %s{_KEY} RETURNING {_COLUMNS}"


class PostgresTable(MembershipTable):
    """Rows of a cluster in PostgreSQL tables; changes of status take turns on the
    cluster's version row.

    Open one with :meth:`open` (or :func:`~towtruck.cluster.table.open_table`).
    """

    failures: ClassVar[tuple[type[BaseException], ...]] = (psycopg.Error, OSError)

    def __init__(self, url: str, *, timeout: float, connections: int) -> None:
        super().__init__(timeout=timeout)
        self.url = redact_url(url)
        conninfo, self.cluster = _split_cluster(url)
        self._pool = PostgresPool(
            conninfo,
            timeout=timeout,
            connections=connections,
            name="towtruck-membership",
            tables=_TABLES,
            schema=_SCHEMA,
        )

    @classmethod
    async def open(cls, url: str, *, timeout: float, connections: int = 4) -> PostgresTable:  # noqa: ASYNC109 (per operation)
        """The membership table of the cluster ``url`` names, with a pool of up to
        ``connections`` connections (a node makes a few calls a heartbeat). Connects in
        the background: a server that is down fails the operations, not the opening.
        A checkpoint.

        Raises:
            SettingsError: ``url`` is not a URL psycopg can read, or names no cluster.
        """
        try:
            table = cls(url, timeout=timeout, connections=connections)
        except psycopg.ProgrammingError as exc:  # from PostgresPool
            raise SettingsError(f"{redact_url(url)}: {exc}", setting="membership") from None
        await table._pool.open()
        return table

    async def _read(self) -> Table:
        def read(conn: Connection) -> Table:
            found = conn.execute(_READ, (self.cluster,), binary=True).fetchall()
            version = found[0][0] or 0  # a one-row result: no version row yet is 0
            return Table(version, tuple(_row(row[1:]) for row in found if row[1] is not None))

        return await self._pool.run(read)

    async def _join(self, address: str, generation: int, now: float) -> None:
        def join(conn: Connection) -> None:
            with conn.transaction():
                conn.execute(_MOVE_ON, (self.cluster,))
                conn.execute(_SUPERSEDE, (now, self.cluster, address, generation))
                conn.execute(_JOIN, (self.cluster, address, generation, now, now))

        await self._pool.run(join)

    async def _set_status(self, address: str, generation: int, status: Status, now: float) -> bool:
        def set_status(conn: Connection) -> bool:
            key = (self.cluster, address, generation)
            with conn.transaction():
                conn.execute(_MOVE_ON, (self.cluster,))
                if conn.execute(_SET_STATUS + _UNLESS_DEAD, (status.value, now, *key)).rowcount:
                    return True
                raise psycopg.Rollback  # dead or no such row: the version stays
            return False

        return await self._pool.run(set_status)

    async def _alive(self, address: str, generation: int, now: float) -> None:
        def alive(conn: Connection) -> None:
            conn.execute(_ALIVE, (now, self.cluster, address, generation))

        await self._pool.run(alive)

    async def _vote(self, address: str, generation: int, voter: str, now: float) -> Row | None:
        # One statement: `||` merges the vote into the row's votes under its row lock,
        # so concurrent voters never lose each other's votes.
        def vote(conn: Connection) -> Row | None:
            params = (Jsonb({voter: now}), self.cluster, address, generation)
            row = conn.execute(_VOTE, params, binary=True).fetchone()
            return None if row is None else _row(row)

        return await self._pool.run(vote)

    # Why exactly one of many declarers with the same version succeeds, under READ
    # COMMITTED: each begins with `UPDATE ... SET version = version + 1 WHERE version =
    # %s` on the cluster's one version row. The first takes the row's lock; the others
    # wait for it. When it commits, PostgreSQL re-checks each waiter's WHERE against
    # the row's newest version (not against the waiter's snapshot), finds version + 1,
    # and updates nothing: they return False. If the first rolls back instead (the
    # generation was dead already), the next waiter goes ahead on the old version, and
    # finds it dead too. A SELECT of the version followed by an UPDATE would not do:
    # both declarers could read the same version before either wrote it. Every other
    # change of status takes the same lock first, so a declaration and a join or
    # set_status also take turns, and the version a declarer saw is still the version
    # when it marks the row.
    async def _declare_dead(self, address: str, generation: int, version: int, now: float) -> bool:
        def declare_dead(conn: Connection) -> bool:
            key = (self.cluster, address, generation)
            with conn.transaction():
                if not conn.execute(_MOVE_ON_FROM, (self.cluster, version)).rowcount:
                    return False  # the table moved on: the caller's view is stale
                if conn.execute(_SET_STATUS + _UNLESS_DEAD, ("dead", now, *key)).rowcount:
                    return True
                raise psycopg.Rollback  # dead already or no such row: the version stays
            return False

        return await self._pool.run(declare_dead)

    async def aclose(self) -> None:
        """Close the pool's connections and stop its threads. A checkpoint; if
        cancelled, the closing still finishes first."""
        await self._pool.aclose()


def _split_cluster(url: str) -> tuple[str, str]:
    """``url`` without its ``cluster`` parameter (libpq refuses parameters it does not
    know), and the cluster it names."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    named = [value for key, value in query if key == "cluster"]
    if len(named) > 1:
        raise SettingsError(f"{redact_url(url)}: name one cluster", setting="membership")
    cluster = named[0] if named else DEFAULT_CLUSTER
    if not cluster:
        raise SettingsError(f"{redact_url(url)}: the cluster has no name", setting="membership")
    if not named:
        return url, cluster
    rest = urlencode([(key, value) for key, value in query if key != "cluster"], safe="/")
    return urlunsplit(parts._replace(query=rest)), cluster


def _row(found: tuple[Any, ...]) -> Row:
    """The row that ``_COLUMNS`` describe."""
    address, generation, status, alive, votes, changed = found
    return Row(
        address,
        generation,
        Status(status),
        alive,
        {str(voter): float(when) for voter, when in votes.items()},
        changed,
    )
