"""Membership tables (see :mod:`towtruck.cluster.table.base`), one module per backend.

=================================  ==========================================
``gossip:``                        no table: the nodes' gossip alone (the default)
``redis://host:port/db``           Redis (``pip install towtruck[redis]``)
``postgresql://user@host/db``      PostgreSQL (``pip install towtruck[postgres]``)
``etcd://host:port``               etcd v3, through its JSON gateway
``memory://name``                  this process's memory (tests, simulations)
=================================  ==========================================
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ...errors import SettingsError
from .base import DEFAULT_TIMEOUT, MembershipTable, Row, Status, Table

__all__ = ["DEFAULT_TIMEOUT", "MembershipTable", "Row", "Status", "Table", "open_table"]


async def open_table(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> MembershipTable | None:  # noqa: ASYNC109 (per operation)
    """Open the table ``url`` names; None for ``gossip:``. A checkpoint.

    Raises:
        SettingsError: the URL names no table, or its backend's library is missing.
        StoreUnavailable: the table cannot be reached now.
    """
    parts = urlsplit(url)
    if parts.scheme == "gossip":
        return None
    if parts.scheme == "memory":
        from .memory import memory_table

        return memory_table(parts.netloc, timeout=timeout)
    if parts.scheme in ("redis", "rediss"):
        try:
            from .redis import RedisTable
        except ImportError as exc:
            raise SettingsError(
                f"{url}: Redis needs `pip install towtruck[redis]` ({exc})"
            ) from None
        return await RedisTable.open(url, timeout=timeout)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresTable
        except ImportError as exc:
            raise SettingsError(
                f"{url}: PostgreSQL needs `pip install towtruck[postgres]` ({exc})"
            ) from None
        return await PostgresTable.open(url, timeout=timeout)
    if parts.scheme == "etcd":
        from .etcd import EtcdTable

        return await EtcdTable.open(url, timeout=timeout)
    raise SettingsError(
        f"{url}: expected gossip:, redis://, postgresql://, etcd:// or memory://",
        setting="membership",
    )
