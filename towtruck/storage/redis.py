"""A store in Redis (``redis://host:port/db``, ``rediss://`` for TLS), through coredis.

Each actor is a hash, ``towtruck:actor:{id}``: the field ``epoch``, and for each state
``v:{name}`` (its JSON document) and ``n:{name}`` (its version, the etag). Every claimed
id is also in the sorted set ``towtruck:ids``, all at score 0, so ``ZRANGE ... BYLEX``
pages through them in order. Claim, write and clear are Lua scripts, so each check and
its change are one atomic step on the server; a read is one ``HGETALL``.

An actor's reminders are the hash ``towtruck:reminders:{id}``: for each reminder
``d:{name}`` (when it is due), ``p:{name}`` (its period, empty for none),
``g:{name}`` (its generation) and ``x:{name}`` (its JSON data). It is also a member of
the sorted set of its bucket, ``towtruck:due:{bucket}``, scored by when it is due, so
the due ones of a bucket are one ``ZRANGE ... BYSCORE``; the member is
``{n}:{id}{name}``, ``n`` the length of the id in UTF-8 bytes. Setting, forgetting and
marking done are Lua scripts that change the hash and the sorted set together; the due
ones of several buckets are found, and read, by one script. Times are written as
Python's ``repr`` of the float, which reads back as the same float (Redis parses the
score from it exactly too); marking a tick done compares that text, so it matches only
the very float the reminder was due at.

A claim touches two keys, and the reminders' scripts keys they are not given, so the
store needs a single Redis (or a primary), not Redis Cluster.

Needs Redis 6.2 or newer. The connection, its TLS and the sending of commands are
:mod:`towtruck.storage.redis_client`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import coredis
import trio
from coredis.tokens import PureToken

from .base import Claim, OutcomeUnknown, ReminderRow, Store, Stored, bucket_of, conflict
from .redis_client import FAILURES, RedisClient, float_text

__all__ = ["RedisStore"]

_IDS: Final = "towtruck:ids"
_REMINDERS: Final = "towtruck:reminders:"
_FIELDS: Final = (b"d:", b"p:", b"g:", b"x:")  # due, period, generation, data

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

# The reminders' scripts change the sorted set first: ZADD is what refuses a bad score,
# and a script that fails must fail before its first change (see RedisStore.failures).
# KEYS: the actor's reminders, its bucket's sorted set. ARGV: the name, the member, the
# due time, the period, the generation, the data.
_SET_REMINDER: Final = """
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], ARGV[3], 'p:' .. ARGV[1], ARGV[4],
    'g:' .. ARGV[1], ARGV[5], 'x:' .. ARGV[1], ARGV[6])
"""
# KEYS and ARGV: as above, up to the member. Returns how many fields it removed.
_FORGET_REMINDER: Final = """
redis.call('ZREM', KEYS[2], ARGV[2])
return redis.call('HDEL', KEYS[1], 'd:' .. ARGV[1], 'p:' .. ARGV[1], 'g:' .. ARGV[1],
    'x:' .. ARGV[1])
"""
# KEYS: as above. ARGV: the name, the member, the generation, the due time, the next
# ('' to remove the reminder). Returns 1 if the reminder was of that generation and
# due then, and is changed; 0 if not, and nothing is.
_REMINDER_DONE: Final = """
local found = redis.call('HMGET', KEYS[1], 'g:' .. ARGV[1], 'd:' .. ARGV[1])
if found[1] ~= ARGV[3] or found[2] ~= ARGV[4] then return 0 end
if ARGV[5] == '' then
    redis.call('ZREM', KEYS[2], ARGV[2])
    redis.call('HDEL', KEYS[1], 'd:' .. ARGV[1], 'p:' .. ARGV[1], 'g:' .. ARGV[1],
        'x:' .. ARGV[1])
else
    redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
    redis.call('HSET', KEYS[1], 'd:' .. ARGV[1], ARGV[5])
end
return 1
"""
# KEYS: the buckets' sorted sets. ARGV: the exclusive bound ('(' and a time), the limit
# per bucket. Returns the id, name, due time, period, generation and data of each due
# reminder, one after the other (it reads hashes it is not given: see the module).
_DUE_REMINDERS: Final = f"""
local found = {{}}
for _, key in ipairs(KEYS) do
    local due = redis.call('ZRANGE', key, '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
    for _, member in ipairs(due) do
        local colon = string.find(member, ':', 1, true)
        local last = colon + tonumber(string.sub(member, 1, colon - 1))
        local actor = string.sub(member, colon + 1, last)
        local name = string.sub(member, last + 1)
        local row = redis.call('HMGET', '{_REMINDERS}' .. actor, 'd:' .. name,
            'p:' .. name, 'g:' .. name, 'x:' .. name)
        table.insert(found, actor)
        table.insert(found, name)
        for i = 1, 4 do table.insert(found, row[i]) end
    end
end
return found
"""


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
    failures: ClassVar[tuple[type[BaseException], ...]] = FAILURES
    # A command sent and not answered in time may still be applied (see above).
    uncertain: ClassVar[tuple[type[BaseException], ...]] = (OutcomeUnknown, trio.TooSlowError)

    def __init__(self, redis: RedisClient) -> None:
        super().__init__(timeout=redis.timeout)
        self.url = redis.url
        self._redis = redis
        client = redis.commands
        self._claim_script = client.register_script(_CLAIM)
        self._write_script = client.register_script(_WRITE)
        self._clear_script = client.register_script(_CLEAR)
        self._set_reminder_script = client.register_script(_SET_REMINDER)
        self._forget_reminder_script = client.register_script(_FORGET_REMINDER)
        self._reminder_done_script = client.register_script(_REMINDER_DONE)
        self._due_reminders_script = client.register_script(_DUE_REMINDERS)

    @classmethod
    async def open(cls, url: str, *, timeout: float) -> RedisStore:  # noqa: ASYNC109 (per operation)
        """A store for the Redis at ``url``; it connects on first use, so a server that
        is down now makes each operation fail, not this. A checkpoint.

        Close it with :meth:`aclose`, from any task of the same ``trio.run``.
        """
        return cls(await RedisClient.open(url, timeout=timeout))

    async def aclose(self) -> None:
        """Close the connection; operations still waiting fail with StoreUnavailable.
        A checkpoint; when cancelled, the connection still closes."""
        await self._redis.aclose()

    async def _claim(self, actor_id: str) -> Claim:
        keys = [_key(actor_id), _IDS]
        fields: list[bytes] = await self._redis.run(self._claim_script(keys=keys, args=[actor_id]))
        return _found(dict(zip(fields[::2], fields[1::2], strict=True)))

    async def _read(self, actor_id: str) -> Claim:
        return _found(await self._redis.run(self._redis.commands.hgetall(_key(actor_id))))

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
        answer: list[Any] = await self._redis.run(script(keys=[_key(actor_id)], args=args))
        status, found = answer
        if status == 1:
            why = f"the actor's epoch is {int(found)}, not {epoch}"
            raise conflict(actor_id, name, epoch, why)
        if status == 2:
            raise conflict(actor_id, name, epoch, f"its etag is not {etag!r}")
        return int(found)

    async def _ids(self, after: str | None, limit: int) -> list[str]:
        low = "-" if after is None else "(" + after
        request = self._redis.commands.zrange(
            _IDS, low, "+", PureToken.BYLEX, offset=0, count=limit
        )
        return [member.decode() for member in await self._redis.run(request)]

    async def _set_reminder(self, row: ReminderRow) -> None:
        keys, (name, member) = _reminder_keys(row.actor, row.name)
        period = "" if row.period is None else float_text(row.period)
        args = [name, member, float_text(row.due), period, str(row.generation), row.data]
        await self._redis.run(self._set_reminder_script(keys=keys, args=args))

    async def _forget_reminder(self, actor_id: str, name: str) -> bool:
        keys, args = _reminder_keys(actor_id, name)
        removed: int = await self._redis.run(self._forget_reminder_script(keys=keys, args=args))
        return removed > 0

    async def _reminders(self, actor_id: str) -> list[ReminderRow]:
        fields = await self._redis.run(self._redis.commands.hgetall(_REMINDERS + actor_id))
        names = (field[2:] for field in fields if field.startswith(b"g:"))
        return [
            _reminder(actor_id, name, [fields.get(kind + name) for kind in _FIELDS])
            for name in names
        ]

    async def _reminder(self, actor_id: str, name: str) -> ReminderRow | None:
        wanted = [kind + name.encode() for kind in _FIELDS]
        found = await self._redis.run(self._redis.commands.hmget(_REMINDERS + actor_id, wanted))
        return None if found[2] is None else _reminder(actor_id, name.encode(), found)

    async def _due_reminders(
        self, buckets: list[int], before: float, limit: int
    ) -> list[ReminderRow]:
        keys = [_due_key(bucket) for bucket in buckets]
        args = ["(" + float_text(before), str(limit)]
        found: list[Any] = await self._redis.run(self._due_reminders_script(keys=keys, args=args))
        return [
            _reminder(found[i].decode(), found[i + 1], found[i + 2 : i + 6])
            for i in range(0, len(found), 6)
            if found[i + 4] is not None  # no hash fields: the scripts never leave a member so
        ]

    async def _reminder_done(
        self, actor_id: str, name: str, generation: int, due: float, next_due: float | None
    ) -> bool:
        keys, args = _reminder_keys(actor_id, name)
        args += [str(generation), float_text(due), "" if next_due is None else float_text(next_due)]
        done: int = await self._redis.run(self._reminder_done_script(keys=keys, args=args))
        return done == 1


def _key(actor_id: str) -> str:
    return f"towtruck:actor:{actor_id}"


def _due_key(bucket: int) -> str:
    return f"towtruck:due:{bucket}"


def _reminder_keys(actor_id: str, name: str) -> tuple[list[str], list[str | bytes]]:
    """The keys of a reminder (its actor's hash, its bucket's sorted set), and the first
    arguments of its scripts (its name, its member in the sorted set)."""
    actor = actor_id.encode()
    member = b"%d:%b%b" % (len(actor), actor, name.encode())
    return [_REMINDERS + actor_id, _due_key(bucket_of(actor_id))], [name, member]


def _reminder(actor_id: str, name: bytes, found: Sequence[Any]) -> ReminderRow:
    """The reminder that its four fields (as ``_FIELDS`` lists them) describe."""
    due, period, generation, data = found
    return ReminderRow(
        actor_id,
        name.decode(),
        float(due),
        float(period) if period else None,
        data,
        int(generation),
    )


def _found(fields: Mapping[bytes, bytes]) -> Claim:
    """The claim an actor's hash holds."""
    states = {
        field[2:].decode(): Stored(fields[b"n:" + field[2:]].decode(), value)
        for field, value in fields.items()
        if field.startswith(b"v:")
    }
    return Claim(int(fields.get(b"epoch", 0)), states)
