"""A store in Redis (``redis://host:port/db``, ``rediss://`` for TLS), through coredis.

Each actor is a hash, ``towtruck:actor:{id}``: the field ``epoch``, and for each state
``v:{name}`` (its JSON document) and ``n:{name}`` (its version, the etag). Every claimed
id is also in the sorted set ``towtruck:ids``, all at score 0, so ``ZRANGE ... BYLEX``
pages through them in order. Claim, write and clear are Lua scripts, so each check and
its change are one atomic step on the server; a read is one ``HGETALL``. A claim
touches two keys, so the store needs a single Redis (or a primary), not Redis Cluster.

Needs Redis 6.2 or newer. For ``rediss://`` without ``ssl_*`` options in the URL, the
server's certificate and host name are checked against the system's CAs.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Mapping
from typing import Any, ClassVar, Final, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import coredis
import trio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis.connection import TCPConnection, TCPLocation
from coredis.exceptions import RedisError
from coredis.pool import ConnectionPool
from coredis.retry import NoRetryPolicy
from coredis.tokens import PureToken

from ..errors import SettingsError
from .base import Claim, OutcomeUnknown, Store, Stored, conflict

__all__ = ["RedisStore"]

logger = logging.getLogger("towtruck")

T = TypeVar("T")

_IDS: Final = "towtruck:ids"

# KEYS: the actor's hash, the id set. ARGV: the actor's id.
_CLAIM: Final = """
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# The fence of a write and a clear. KEYS: the actor's hash. ARGV: the epoch, the state's
# name, the etag ('' for "must not exist"), [the value]. Returns {0, the new version},
# {1, the actor's epoch} or {2, the state's version}: 1 and 2 say which check failed.
_FENCE: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch') or '0'
if epoch ~= ARGV[1] then return {1, epoch} end
local version = redis.call('HGET', KEYS[1], 'n:' .. ARGV[2]) or ''
if version ~= ARGV[3] then return {2, version} end
"""
_WRITE: Final = (
    _FENCE
    + """
redis.call('HSET', KEYS[1], 'v:' .. ARGV[2], ARGV[4])
return {0, redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[2], 1)}
"""
)
_CLEAR: Final = (
    _FENCE
    + """
redis.call('HDEL', KEYS[1], 'v:' .. ARGV[2], 'n:' .. ARGV[2])
return {0, 0}
"""
)


class RedisStore(Store):
    """Actors' states in Redis (see the module). Open it with :meth:`open`.

    Every operation is a checkpoint. One that has sent its command waits for the
    answer (at most ``timeout``) even when cancelled, then raises the cancellation:
    a cancelled write either committed or did not, and never lands later. A write that
    Redis did not answer within ``timeout`` may still commit when Redis gets to it, so
    it fails with CallInterrupted, not StoreUnavailable, and its activation is dropped.
    """

    # Every error reply means the command was refused as a whole (an error in a script
    # comes before its first change): the store failed, nothing was written.
    failures: ClassVar[tuple[type[BaseException], ...]] = (
        RedisError,
        OSError,
        trio.TooSlowError,
    )
    # A command sent and not answered in time may still be applied (see above).
    uncertain: ClassVar[tuple[type[BaseException], ...]] = (OutcomeUnknown, trio.TooSlowError)

    def __init__(self, client: coredis.Redis[bytes], *, url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.url = url
        self._client = client
        self._claim_script = client.register_script(_CLAIM)
        self._write_script = client.register_script(_WRITE)
        self._clear_script = client.register_script(_CLEAR)
        self._closing = trio.Event()
        self._closed = trio.Event()

    @classmethod
    async def open(cls, url: str, *, timeout: float) -> RedisStore:  # noqa: ASYNC109 (per operation)
        """A store for the Redis at ``url``; it connects on first use, so a server that
        is down now makes each operation fail, not this. A checkpoint.

        Close it with :meth:`aclose`, from any task of the same ``trio.run``.
        """
        options: dict[str, Any] = {}
        parts = urlsplit(url)
        if parts.scheme == "rediss" and not any(
            key.startswith("ssl_") for key, _ in parse_qsl(parts.query)
        ):
            options["ssl_context"] = ssl.create_default_context()
        pool = _SharedConnection.from_url(
            url,
            decode_components=True,
            decode_responses=False,
            connect_timeout=timeout,
            stream_timeout=timeout,
            **options,
        )
        if not isinstance(pool.location, TCPLocation):
            raise SettingsError("a Redis URL names a host: write redis://host:port/db")
        # No retries: a retried claim or write may run twice. The caller decides.
        client = coredis.Redis(connection_pool=pool, retry_policy=NoRetryPolicy())
        store = cls(client, url=_without_password(url), timeout=timeout)
        # coredis' client is an async context manager around a task group that runs its
        # connections, and a task group must be exited by the task that entered it,
        # after the scopes it opened inside are closed. A store opened in one task and
        # closed in another (or from inside a `fail_after`) cannot hold it, so a
        # system task of the run holds it, from `open` until `aclose` (or the end of
        # the run). A nursery from the caller would do as well, but `open_store` has
        # none to give.
        entered = trio.Event()
        trio.lowlevel.spawn_system_task(store._hold_client, entered, name=repr(store))
        try:
            await entered.wait()
        except BaseException:
            store._closing.set()
            raise
        return store

    async def _hold_client(self, entered: trio.Event) -> None:
        try:
            async with self._client:
                entered.set()
                await self._closing.wait()
        except Exception:  # a system task must not raise: that would crash the run
            logger.exception("the Redis client of %s failed", self.url)
        finally:
            entered.set()
            self._closed.set()

    async def aclose(self) -> None:
        """Close the connections; operations still waiting fail with StoreUnavailable.
        A checkpoint; when cancelled, the connections still close."""
        self._closing.set()
        await self._closed.wait()

    async def _run(self, request: Awaitable[T]) -> T:
        """The answer to ``request`` (a coredis command, sent when awaited), within
        ``timeout``. Cancellation stops it before it is sent, not after (see the class)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True), trio.fail_after(self.timeout):
            answer = await request
        await trio.lowlevel.checkpoint()
        return answer

    async def _claim(self, actor_id: str) -> Claim:
        keys = [_key(actor_id), _IDS]
        fields: list[bytes] = await self._run(self._claim_script(keys=keys, args=[actor_id]))
        return _found(dict(zip(fields[::2], fields[1::2], strict=True)))

    async def _read(self, actor_id: str) -> Claim:
        return _found(await self._run(self._client.hgetall(_key(actor_id))))

    async def _write(
        self, actor_id: str, name: str, value: bytes, epoch: int, etag: str | None
    ) -> str:
        return str(await self._fenced(self._write_script, actor_id, name, epoch, etag, value))

    async def _clear(self, actor_id: str, name: str, epoch: int, etag: str | None) -> None:
        await self._fenced(self._clear_script, actor_id, name, epoch, etag)

    async def _fenced(
        self,
        script: coredis.commands.Script[bytes],
        actor_id: str,
        name: str,
        epoch: int,
        etag: str | None,
        value: bytes | None = None,
    ) -> int:
        """Run a write or clear script: the state's new version, or the conflict found."""
        args: list[str | bytes] = [str(epoch), name, etag or ""]
        if value is not None:
            args.append(value)
        answer: list[Any] = await self._run(script(keys=[_key(actor_id)], args=args))
        status, found = answer
        if status == 1:
            why = f"the actor's epoch is {int(found)}, not {epoch}"
            raise conflict(actor_id, name, epoch, why)
        if status == 2:
            raise conflict(actor_id, name, epoch, f"its etag is not {etag!r}")
        return int(found)

    async def _ids(self, after: str | None, limit: int) -> list[str]:
        low = "-" if after is None else "(" + after
        request = self._client.zrange(_IDS, low, "+", PureToken.BYLEX, offset=0, count=limit)
        return [member.decode() for member in await self._run(request)]


# coredis sends each command on a connection of its pool and matches the answers in
# order, releasing the connection as soon as the command is queued, so one connection
# carries any number of concurrent operations, pipelined. Its own pool (coredis 6.9)
# loses a slot for good whenever the task creating a connection is cancelled (here: an
# operation's deadline while a connect hangs), and after 64 of them every operation
# would wait for a connection forever; and a connection that failed to connect leaves
# its buffers to the garbage collector, which warns. This pool keeps one connection,
# makes a new one under a lock when it is gone, and closes what a failed one left.
class _SharedConnection(ConnectionPool[TCPConnection]):
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
        location = cast(TCPLocation, self.location)  # as `open` checked
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


def _key(actor_id: str) -> str:
    return f"towtruck:actor:{actor_id}"


def _found(fields: Mapping[bytes, bytes]) -> Claim:
    """The claim an actor's hash holds."""
    states = {
        field[2:].decode(): Stored(fields[b"n:" + field[2:]].decode(), value)
        for field, value in fields.items()
        if field.startswith(b"v:")
    }
    return Claim(int(fields.get(b"epoch", 0)), states)


def _without_password(url: str) -> str:
    """``url`` as errors and logs may show it."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"], safe="/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
