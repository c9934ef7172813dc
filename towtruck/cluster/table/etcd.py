"""A membership table in etcd v3, through its JSON gateway (``etcd://host:port``).

The URL is ``etcd://host:port?cluster=NAME`` (``cluster`` defaults to ``towtruck``), so
several clusters can share one etcd. Their keys, with values as etcd shows them::

    /towtruck/members/{cluster}/version                       the table's version: "7"
    /towtruck/members/{cluster}/rows/{address}/{generation}   Row.to_payload() as JSON

The gateway (``POST /v3/kv/range``, ``/v3/kv/txn``) speaks protobuf's JSON, keys and
values base64; it needs no client library beyond httpx, which towtruck has already.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx
import trio

from ...errors import SettingsError
from ...settings import redact_url
from .base import DEFAULT_TIMEOUT, MembershipTable, Row, Status, Table

__all__ = ["EtcdTable"]

#: The cluster a URL without ``?cluster=`` names.
DEFAULT_CLUSTER: Final = "towtruck"
#: Where every cluster's keys live.
ROOT: Final = "/towtruck/members/"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A key's value and the revision that last changed it."""

    value: bytes
    mod_revision: int


#: Keys as a transaction read them, all at one revision (an absent key is absent).
_Snapshot = Mapping[str, _Entry]
#: A change to make: the keys to put and their values.
_Puts = dict[str, bytes]


class EtcdTable(MembershipTable):
    """The table in etcd; open with :meth:`open`, close with :meth:`aclose`.

    Every operation is a few HTTP requests, each a checkpoint. One cancelled halfway
    (or timed out) either committed its transaction or did not, as the caller cannot
    tell: every change is safe to make again.

    Args:
        client: Talks to etcd's gateway (its ``base_url``); the table closes it.
        cluster: Whose rows these are (the keys' prefix).
        url: The table's URL without a password, for errors and logs.
        timeout: Seconds one operation may take (see :class:`MembershipTable`).
    """

    #: Connection refused or reset, an error status from the gateway, a timeout (all
    #: ``httpx.HTTPError``), and an answer that is not what etcd sends (``ValueError``).
    failures: ClassVar[tuple[type[BaseException], ...]] = (httpx.HTTPError, OSError, ValueError)

    def __init__(
        self, client: httpx.AsyncClient, cluster: str, url: str, *, timeout: float
    ) -> None:
        super().__init__(timeout=timeout)
        self._client = client
        self.url = url
        self.prefix = f"{ROOT}{cluster}/"
        self._version_key = f"{self.prefix}version"

    @classmethod
    async def open(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> EtcdTable:  # noqa: ASYNC109 (per operation)
        """The table ``url`` names, once etcd has answered a read. A checkpoint.

        Raises:
            SettingsError: the URL is not ``etcd://host:port?cluster=NAME``.
            StoreUnavailable: etcd did not answer (the client is closed again).
        """
        base, cluster = _parse(url)
        client = httpx.AsyncClient(base_url=base, timeout=timeout, trust_env=False)
        table = cls(client, cluster, redact_url(url), timeout=timeout)
        try:
            await table._guard("open", lambda: table._range(_key(table._version_key)))
        except BaseException:
            with trio.CancelScope(shield=True):  # closing local sockets: it cannot hang
                await client.aclose()
            raise
        return table

    async def aclose(self) -> None:
        """Close the HTTP client and its connections. A checkpoint."""
        await self._client.aclose()

    # Every change is one etcd transaction that puts the keys it changes if, and only
    # if, none of them changed since they were read: it compares each one's
    # mod_revision with the one read (0 for a key that did not exist yet). A change of
    # status puts the version key too, so changes of status are serialised by that one
    # key; a row appears only by a join, which moves the version on, so comparing the
    # version covers the rows a join reads but does not put. When the compare fails,
    # the transaction's failure branch reads the same keys again, and the change is
    # decided afresh on them: for a join, a vote or an I-am-alive it goes through on
    # the next try; for a death it fails as soon as the version is no longer the one
    # the voter saw, so of the declarers with one version exactly one succeeds.
    #
    # Alternatives that lost: a lock (a lease-held key) costs three round trips and
    # a stuck holder until the lease expires; etcd's own key ``version`` counter as
    # the table's version would restart at 1 if an operator deleted the key; comparing
    # every row the transaction read grows the compare list with each restart of an
    # address, past etcd's ``--max-txn-ops`` (128) in the end.

    async def _read(self) -> Table:
        snapshot = await self._range(_prefix(self.prefix))
        rows = tuple(
            _decode_row(key, entry) for key, entry in snapshot.items() if self._is_row(key)
        )
        return Table(self._version(snapshot), rows)

    async def _join(self, address: str, generation: int, now: float) -> None:
        def decide(snapshot: _Snapshot) -> tuple[_Puts, None]:
            puts: _Puts = {}
            for key, entry in snapshot.items():
                if not self._is_row(key):
                    continue
                row = _decode_row(key, entry)
                if row.generation < generation and row.status is not Status.DEAD:
                    puts[key] = _encode_row(
                        dataclasses.replace(row, status=Status.DEAD, changed=now)
                    )
            joined = Row(address, generation, Status.JOINING, now, {}, now)
            puts[self._row_key(address, generation)] = _encode_row(joined)
            puts[self._version_key] = self._next_version(snapshot)
            return puts, None

        reads = [_key(self._version_key), _prefix(f"{self.prefix}rows/{address}/")]
        await self._change(reads, decide)

    async def _set_status(self, address: str, generation: int, status: Status, now: float) -> bool:
        key = self._row_key(address, generation)

        def decide(snapshot: _Snapshot) -> tuple[_Puts, bool] | None:
            row = _row_in(snapshot, key)
            if row is None or row.status is Status.DEAD:
                return None
            changed = _encode_row(dataclasses.replace(row, status=status, changed=now))
            return {key: changed, self._version_key: self._next_version(snapshot)}, True

        return bool(await self._change([_key(self._version_key), _key(key)], decide))

    async def _alive(self, address: str, generation: int, now: float) -> None:
        key = self._row_key(address, generation)

        def decide(snapshot: _Snapshot) -> tuple[_Puts, None] | None:
            row = _row_in(snapshot, key)
            if row is None:
                return None
            return {key: _encode_row(dataclasses.replace(row, alive=now))}, None

        await self._change([_key(key)], decide)

    async def _vote(self, address: str, generation: int, voter: str, now: float) -> Row | None:
        key = self._row_key(address, generation)

        def decide(snapshot: _Snapshot) -> tuple[_Puts, Row] | None:
            row = _row_in(snapshot, key)
            if row is None:
                return None
            row = dataclasses.replace(row, votes={**row.votes, voter: now})
            return {key: _encode_row(row)}, row

        return await self._change([_key(key)], decide)

    async def _declare_dead(self, address: str, generation: int, version: int, now: float) -> bool:
        key = self._row_key(address, generation)

        def decide(snapshot: _Snapshot) -> tuple[_Puts, bool] | None:
            row = _row_in(snapshot, key)
            if row is None or row.status is Status.DEAD or self._version(snapshot) != version:
                return None
            dead = _encode_row(dataclasses.replace(row, status=Status.DEAD, changed=now))
            return {key: dead, self._version_key: self._next_version(snapshot)}, True

        return bool(await self._change([_key(self._version_key), _key(key)], decide))

    async def _change(
        self,
        reads: list[dict[str, str]],
        decide: Callable[[_Snapshot], tuple[_Puts, T] | None],
    ) -> T | None:
        """Read ``reads``, and put what ``decide`` makes of them if none of the keys it
        puts changed meanwhile, deciding again on a fresh read until that holds (see
        above); what ``decide`` answered, or None if it had nothing to put."""
        snapshot = await self._get(reads)
        while True:
            decided = decide(snapshot)
            if decided is None:
                return None
            puts, result = decided
            compare = [
                {
                    "key": _b64(key),
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": str(snapshot[key].mod_revision if key in snapshot else 0),
                }
                for key in puts
            ]
            success = [
                {"request_put": {"key": _b64(key), "value": _b64(value)}}
                for key, value in puts.items()
            ]
            answer = await self._post(
                "/v3/kv/txn",
                {
                    "compare": compare,
                    "success": success,
                    "failure": [{"request_range": read} for read in reads],
                },
            )
            if answer.get("succeeded", False):
                return result
            snapshot = _snapshot(_ranges(answer))

    async def _range(self, read: dict[str, str]) -> _Snapshot:
        """The keys one range request names."""
        return _snapshot([await self._post("/v3/kv/range", read)])

    async def _get(self, reads: list[dict[str, str]]) -> _Snapshot:
        """The keys ``reads`` name, at one revision: a transaction with no compares."""
        answer = await self._post(
            "/v3/kv/txn", {"success": [{"request_range": read} for read in reads]}
        )
        return _snapshot(_ranges(answer))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post(path, json=body)
        if response.is_error:
            raise httpx.HTTPStatusError(
                f"etcd answered {response.status_code} to {path}: {_message(response)}",
                request=response.request,
                response=response,
            )
        answer = response.json()
        if not isinstance(answer, dict):
            raise ValueError(f"etcd answered {path} with {type(answer).__name__}, not an object")
        return answer

    def _row_key(self, address: str, generation: int) -> str:
        return f"{self.prefix}rows/{address}/{generation}"

    def _is_row(self, key: str) -> bool:
        return key.startswith(f"{self.prefix}rows/")

    def _version(self, snapshot: _Snapshot) -> int:
        entry = snapshot.get(self._version_key)
        return 0 if entry is None else int(entry.value)

    def _next_version(self, snapshot: _Snapshot) -> bytes:
        return str(self._version(snapshot) + 1).encode()


def _parse(url: str) -> tuple[str, str]:
    """The gateway's base URL and the cluster's name, from ``etcd://host:port?...``."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "etcd" or not parts.hostname or port is None:
        raise SettingsError(
            f"{redact_url(url)}: expected etcd://host:port?cluster=NAME", setting="membership"
        )
    if parts.username is not None or parts.path not in ("", "/"):
        raise SettingsError(
            f"{redact_url(url)}: expected etcd://host:port?cluster=NAME"
            " (no user, no path: etcd's authentication is not supported)",
            setting="membership",
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"cluster"})
    if unknown:
        raise SettingsError(
            f"{redact_url(url)}: unknown option {', '.join(unknown)} (known: cluster)",
            setting="membership",
        )
    cluster = query.get("cluster", DEFAULT_CLUSTER)
    if not cluster or "/" in cluster:
        raise SettingsError(
            f"{redact_url(url)}: cluster must be a name without '/'", setting="membership"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"http://{host}:{port}", cluster


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _key(key: str) -> dict[str, str]:
    """A range request for one key."""
    return {"key": _b64(key)}


def _prefix(prefix: str) -> dict[str, str]:
    """A range request for every key that starts with ``prefix`` (which ends in ``/``:
    its successor, the end of the range, is then one byte changed)."""
    raw = prefix.encode()
    return {"key": _b64(raw), "range_end": _b64(raw[:-1] + bytes([raw[-1] + 1]))}


def _ranges(answer: dict[str, Any]) -> list[Any]:
    """The answers to the range requests of a transaction."""
    responses = answer.get("responses", [])
    if not isinstance(responses, list):
        raise ValueError(f"etcd answered a transaction with responses {responses!r}")
    return [r["response_range"] for r in responses if isinstance(r, dict) and "response_range" in r]


def _snapshot(ranges: list[Any]) -> dict[str, _Entry]:
    """The keys that range answers found (``{"kvs": [{"key": ..., ...}], ...}``)."""
    found: dict[str, _Entry] = {}
    try:
        for answer in ranges:
            for kv in answer.get("kvs", []):
                key = base64.b64decode(kv["key"]).decode()
                value = base64.b64decode(kv.get("value", ""))
                found[key] = _Entry(value, int(kv["mod_revision"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"etcd answered a range with {ranges!r:.200}") from exc
    return found


def _row_in(snapshot: _Snapshot, key: str) -> Row | None:
    entry = snapshot.get(key)
    return None if entry is None else _decode_row(key, entry)


def _encode_row(row: Row) -> bytes:
    return json.dumps(row.to_payload(), separators=(",", ":")).encode()


def _decode_row(key: str, entry: _Entry) -> Row:
    try:
        return Row.from_payload(json.loads(entry.value))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{key} holds no row ({type(exc).__name__}: {exc})") from exc


def _message(response: httpx.Response) -> str:
    """What the gateway said went wrong (its JSON ``message``, else the body)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else response.text[:200]
