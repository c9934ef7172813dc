"""A coredis client for towtruck's Redis backends: the state store
(:mod:`towtruck.storage.redis`) and the membership table
(:mod:`towtruck.cluster.table.redis`).

:class:`RedisClient` owns the client, its one shared connection (:class:`SharedConnection`)
and the system task that holds them, and sends each command so that a cancelled one
either ran or did not (:meth:`RedisClient.run`). It never retries: a retried claim,
write or join could run twice, so the caller decides.

For ``rediss://`` without ``ssl_*`` options in the URL, the server's certificate and
host name are checked against the system's CAs (coredis alone would check neither).

This module holds coredis' private parts (its pool's and connection's internals), so an
upgrade of coredis that changes them has one place to look.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

import coredis
import trio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis.connection import TCPConnection, TCPLocation
from coredis.exceptions import RedisError
from coredis.pool import ConnectionPool
from coredis.retry import NoRetryPolicy

from ..errors import SettingsError
from ..settings import redact_url

__all__ = ["FAILURES", "RedisClient", "SharedConnection", "float_text"]

logger = logging.getLogger("towtruck")

T = TypeVar("T")

#: What :meth:`RedisClient.run` raises when a command fails: an error reply, a lost
#: connection, or no answer in time.
FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, trio.TooSlowError)


class RedisClient:
    """A coredis client of one Redis, usable from any task of the ``trio.run`` that
    opened it. Open it with :meth:`open`.

    Attributes:
        commands: The coredis client, to build commands and register scripts with;
            send them with :meth:`run`.
        url: The Redis URL, without its password.
        timeout: Seconds any one command may take, connecting included.
    """

    def __init__(self, commands: coredis.Redis[bytes], *, url: str, timeout: float) -> None:
        self.commands = commands
        self.url = url
        self.timeout = timeout
        self._closing = trio.Event()
        self._closed = trio.Event()

    @classmethod
    async def open(cls, url: str, *, timeout: float) -> RedisClient:  # noqa: ASYNC109 (per command)
        """A client of the Redis at ``url``; it connects on first use, so a server that
        is down now makes each command fail, not this. A checkpoint.

        Close it with :meth:`aclose`, from any task of the same ``trio.run``.

        Raises:
            SettingsError: the URL names no host (a Unix socket, say).
        """
        options: dict[str, Any] = {}
        parts = urlsplit(url)
        if parts.scheme == "rediss" and not any(
            key.startswith("ssl_") for key, _ in parse_qsl(parts.query)
        ):
            options["ssl_context"] = ssl.create_default_context()
        pool = SharedConnection.from_url(
            url,
            decode_components=True,
            decode_responses=False,
            connect_timeout=timeout,
            stream_timeout=timeout,
            **options,
        )
        if not isinstance(pool.location, TCPLocation):
            raise SettingsError("a Redis URL names a host: write redis://host:port/db")
        commands = coredis.Redis(connection_pool=pool, retry_policy=NoRetryPolicy())
        client = cls(commands, url=redact_url(url), timeout=timeout)
        # coredis' client is an async context manager around a task group that runs its
        # connections, and a task group must be exited by the task that entered it,
        # after the scopes it opened inside are closed. A client opened in one task and
        # closed in another (or from inside a `fail_after`) cannot hold it, so a
        # system task of the run holds it, from `open` until `aclose` (or the end of
        # the run). A nursery from the caller would do as well, but `open_store` and
        # `open_table` have none to give.
        entered = trio.Event()
        name = f"towtruck Redis client of {client.url}"
        trio.lowlevel.spawn_system_task(client._hold, entered, name=name)
        try:
            await entered.wait()
        except BaseException:
            client._closing.set()
            raise
        return client

    async def _hold(self, entered: trio.Event) -> None:
        try:
            async with self.commands:
                entered.set()
                await self._closing.wait()
        except Exception:  # a system task must not raise: that would crash the run
            logger.exception("the Redis client of %s failed", self.url)
        finally:
            entered.set()
            self._closed.set()

    async def aclose(self) -> None:
        """Close the connection; commands still waiting fail. A checkpoint; when
        cancelled, the connection still closes."""
        self._closing.set()
        await self._closed.wait()

    async def run(self, request: Awaitable[T]) -> T:
        """The answer to ``request`` (a coredis command, sent when awaited), within
        ``timeout``. A checkpoint.

        Cancellation stops it before it is sent, not after: once sent, it waits for the
        answer (at most ``timeout``) even when cancelled, then raises the cancellation,
        so a cancelled change either happened or did not, and never lands later.

        Raises:
            trio.TooSlowError: no answer within ``timeout``; the command may still run
                when Redis gets to it.
            RedisError: Redis refused the command, or could not be reached.
            OSError: the connection failed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True), trio.fail_after(self.timeout):
            answer = await request
        await trio.lowlevel.checkpoint()
        return answer


# coredis sends each command on a connection of its pool and matches the answers in
# order, releasing the connection as soon as the command is queued, so one connection
# carries any number of concurrent operations, pipelined. Its own pool (coredis 6.9)
# loses a slot for good whenever the task creating a connection is cancelled (here: an
# operation's deadline while a connect hangs), and after 64 of them every operation
# would wait for a connection forever; and a connection that failed to connect leaves
# its buffers to the garbage collector, which warns. This pool keeps one connection,
# makes a new one under a lock when it is gone, and closes what a failed one left.
class SharedConnection(ConnectionPool[TCPConnection]):
    """A coredis pool of one shared connection, remade when it is lost."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._connecting = trio.Lock()
        self._connection: TCPConnection | None = None

    async def get_connection(self, **_: Any) -> TCPConnection:
        connection = self._connection
        if connection is None or not connection.usable:
            async with self._connecting:  # one task connects, the others wait for it
                connection = self._connection
                if connection is None or not connection.usable:
                    connection = self._connection = await self._connect()
        return connection

    async def _connect(self) -> TCPConnection:
        location = cast(TCPLocation, self.location)  # as `RedisClient.open` checked
        connection = self.connection_class(location, **self.connection_kwargs)
        failed = await self.task_group.start(self._serve, connection)
        if failed is not None:
            raise failed
        return connection

    async def _serve(
        self,
        connection: TCPConnection,
        *,
        task_status: TaskStatus[RedisError | None] = TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await connection.run(task_status=task_status)
        except RedisError as exc:  # it could not connect: get_connection raises it
            task_status.started(exc)
        finally:
            for part in vars(connection).values():
                if isinstance(part, MemoryObjectSendStream | MemoryObjectReceiveStream):
                    part.close()

    def release(self, connection: TCPConnection) -> None:
        pass  # it stays shared

    def disconnect(self) -> None:
        if self._connection is not None:
            self._connection.invalidate()


def float_text(seconds: float) -> str:
    """A float as the scripts store and compare it: one text for each float, which
    reads back as that very float (Python's ``repr``; Redis parses a score from it
    exactly too). ``+ 0.0`` makes -0.0 the 0.0 it equals, and ``float()`` an int the
    float it equals."""
    return repr(float(seconds) + 0.0)
