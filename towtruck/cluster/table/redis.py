"""A membership table in Redis (``redis://host:port/db?cluster=NAME``, ``rediss://`` for
TLS), through the state store's coredis client (:mod:`towtruck.storage.redis_client`).

A cluster (``cluster`` in the URL, ``towtruck`` if absent) has two keys:

- ``towtruck:members:{NAME}:version``: the table's version, an integer (absent: 0);
- ``towtruck:members:{NAME}:rows``: a hash with a field ``{address}|{generation}`` per
  row, holding the row as JSON (:meth:`Row.to_payload`, with every number written as
  a string: see below).

The braces are Redis Cluster's hash tag: both keys live in one slot, so each script
below, which touches both, runs there too. Every change is one Lua script that checks
and changes both keys in one atomic step on the server (join, set_status, alive, vote,
declare_dead), and a read is one script too, so its version and rows are of one moment.

The scripts edit a row with Redis' ``cjson``, which writes numbers with 14 significant
digits and reads them as doubles: a generation (ns since the epoch, past 2**53) or a
time with its microseconds would change on the way through. So the JSON holds numbers
as strings (times as Python's ``repr`` of the float, which reads back as the same
float), which ``cjson`` passes through untouched and :meth:`Row.from_payload` reads
as it reads numbers. The scripts compare generations as decimal text (see ``_OLDER``).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import SettingsError
from ...settings import redact_url
from ...storage.redis_client import FAILURES, RedisClient, float_text
from .base import MembershipTable, Row, Status, Table

__all__ = ["RedisTable"]

DEFAULT_CLUSTER: Final = "towtruck"

# Every script's KEYS: the version, the rows.
_READ: Final = """
return {redis.call('GET', KEYS[1]) or '0', redis.call('HVALS', KEYS[2])}
"""

# Whether the generation a is older than b, both decimal integers as text (tonumber
# would round them to doubles).
_OLDER: Final = """
local function magnitude_less(a, b)
    if #a ~= #b then return #a < #b end
    return a < b
end
local function older(a, b)
    local a_negative, b_negative = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
    if a_negative ~= b_negative then return a_negative end
    if a_negative then return magnitude_less(b:sub(2), a:sub(2)) end
    return magnitude_less(a, b)
end
"""

# ARGV: the address, the generation, now, the new row's field, the new row.
_JOIN: Final = (
    _OLDER
    + """
local rows = redis.call('HGETALL', KEYS[2])
for i = 1, #rows, 2 do
    local row = cjson.decode(rows[i + 1])
    if row.address == ARGV[1] and row.status ~= 'dead' and older(row.generation, ARGV[2]) then
        row.status = 'dead'
        row.changed = ARGV[3]
        redis.call('HSET', KEYS[2], rows[i], cjson.encode(row))
    end
end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
redis.call('INCR', KEYS[1])
"""
)

# ARGV: the row's field, the status, now. Returns 1 if it moved, 0 if not.
_SET_STATUS: Final = """
local text = redis.call('HGET', KEYS[2], ARGV[1])
if not text then return 0 end
local row = cjson.decode(text)
if row.status == 'dead' then return 0 end
row.status = ARGV[2]
row.changed = ARGV[3]
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(row))
redis.call('INCR', KEYS[1])
return 1
"""

# ARGV: the row's field, now.
_ALIVE: Final = """
local text = redis.call('HGET', KEYS[2], ARGV[1])
if not text then return end
local row = cjson.decode(text)
row.alive = ARGV[2]
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(row))
"""

# ARGV: the row's field, the voter, now. Returns the row after the vote, or false if
# there is none.
_VOTE: Final = """
local text = redis.call('HGET', KEYS[2], ARGV[1])
if not text then return false end
local row = cjson.decode(text)
row.votes[ARGV[2]] = ARGV[3]
text = cjson.encode(row)
redis.call('HSET', KEYS[2], ARGV[1], text)
return text
"""

# ARGV: the row's field, the version the caller saw, now. Returns 1 if this call
# declared the death, 0 if not (the version moved on, no such row, already dead).
_DECLARE_DEAD: Final = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[2] then return 0 end
local text = redis.call('HGET', KEYS[2], ARGV[1])
if not text then return 0 end
local row = cjson.decode(text)
if row.status == 'dead' then return 0 end
row.status = 'dead'
row.changed = ARGV[3]
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(row))
redis.call('INCR', KEYS[1])
return 1
"""


class RedisTable(MembershipTable):
    """A cluster's membership table in Redis (see the module). Open it with :meth:`open`.

    Every operation is a checkpoint. One that has sent its command waits for the answer
    (at most ``timeout``) even when cancelled, then raises the cancellation: a cancelled
    change either happened or did not, and never lands later.
    """

    # An error in a script comes before its first change (each checks, then writes),
    # so an error reply means nothing was written.
    failures: ClassVar[tuple[type[BaseException], ...]] = FAILURES

    def __init__(self, redis: RedisClient, *, cluster: str, url: str) -> None:
        super().__init__(timeout=redis.timeout)
        self.url = url
        self.cluster = cluster
        self._redis = redis
        client = redis.commands
        prefix = f"towtruck:members:{{{cluster}}}"
        self._keys = [f"{prefix}:version", f"{prefix}:rows"]
        self._read_script = client.register_script(_READ)
        self._join_script = client.register_script(_JOIN)
        self._set_status_script = client.register_script(_SET_STATUS)
        self._alive_script = client.register_script(_ALIVE)
        self._vote_script = client.register_script(_VOTE)
        self._declare_dead_script = client.register_script(_DECLARE_DEAD)

    @classmethod
    async def open(cls, url: str, *, timeout: float) -> RedisTable:  # noqa: ASYNC109 (per operation)
        """The table of the cluster ``url`` names in the Redis it names; it connects on
        first use, so a server that is down now makes each operation fail, not this.
        A checkpoint.

        Close it with :meth:`aclose`, from any task of the same ``trio.run``.

        Raises:
            SettingsError: the URL names no host, or an empty cluster.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        cluster = dict(query).get("cluster", DEFAULT_CLUSTER)
        if not cluster:
            raise SettingsError(f"{redact_url(url)}: the cluster's name is empty")
        rest = [(key, value) for key, value in query if key != "cluster"]
        redis_url = urlunsplit(parts._replace(query=urlencode(rest, safe="/")))
        redis = await RedisClient.open(redis_url, timeout=timeout)
        return cls(redis, cluster=cluster, url=redact_url(url))

    async def aclose(self) -> None:
        """Close the connection; operations still waiting fail with StoreUnavailable.
        A checkpoint; when cancelled, the connection still closes."""
        await self._redis.aclose()

    async def _read(self) -> Table:
        answer: list[Any] = await self._redis.run(self._read_script(keys=self._keys))
        version, rows = answer
        return Table(int(version), tuple(_row(text) for text in rows))

    async def _join(self, address: str, generation: int, now: float) -> None:
        row = Row(address, generation, Status.JOINING, now, {}, now)
        args = [address, str(generation), float_text(now), _field(address, generation), _text(row)]
        await self._redis.run(self._join_script(keys=self._keys, args=args))

    async def _set_status(self, address: str, generation: int, status: Status, now: float) -> bool:
        args = [_field(address, generation), status.value, float_text(now)]
        moved: int = await self._redis.run(self._set_status_script(keys=self._keys, args=args))
        return moved == 1

    async def _alive(self, address: str, generation: int, now: float) -> None:
        args = [_field(address, generation), float_text(now)]
        await self._redis.run(self._alive_script(keys=self._keys, args=args))

    async def _vote(self, address: str, generation: int, voter: str, now: float) -> Row | None:
        args = [_field(address, generation), voter, float_text(now)]
        text: bytes | None = await self._redis.run(self._vote_script(keys=self._keys, args=args))
        return None if text is None else _row(text)

    async def _declare_dead(self, address: str, generation: int, version: int, now: float) -> bool:
        args = [_field(address, generation), str(version), float_text(now)]
        declared: int = await self._redis.run(self._declare_dead_script(keys=self._keys, args=args))
        return declared == 1


def _field(address: str, generation: int) -> str:
    return f"{address}|{generation}"


def _text(row: Row) -> str:
    """A row as the hash holds it: its payload, every number as text (see the module)."""
    payload = row.to_payload()
    payload["generation"] = str(row.generation)
    payload["alive"] = float_text(row.alive)
    payload["changed"] = float_text(row.changed)
    payload["votes"] = {voter: float_text(when) for voter, when in row.votes.items()}
    return json.dumps(payload)


def _row(text: bytes) -> Row:
    return Row.from_payload(json.loads(text))
