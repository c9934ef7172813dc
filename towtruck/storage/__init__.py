"""Where actors' persistent state is kept: one :class:`Store` protocol, fenced by epoch
(see :mod:`towtruck.storage.base`), and a module per backend.

=================================  ==========================================
``sqlite:///path/to/file.sqlite3``  an SQLite file (the default for a node)
``redis://host:port/db``           Redis (``pip install towtruck[redis]``)
``postgresql://user@host/db``      PostgreSQL (``pip install towtruck[postgres]``)
``memory:``, ``memory://name``     this process's memory (tests, ``cluster()``)
=================================  ==========================================

:func:`open_store` opens one by URL; backends whose libraries are optional are
imported only when asked for.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import SettingsError
from ..settings import check_store_url, sqlite_path
from .base import DEFAULT_TIMEOUT, Claim, Store, Stored

__all__ = ["DEFAULT_TIMEOUT", "Claim", "Store", "Stored", "check_url", "open_store"]


def check_url(url: str) -> str:
    """``url`` if it names a store :func:`open_store` can open.

    Raises:
        SettingsError: an unknown scheme, or an SQLite URL without a path.
    """
    try:
        return check_store_url(url)
    except ValueError as exc:
        raise SettingsError(str(exc), setting="state_store") from None


async def open_store(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> Store:  # noqa: ASYNC109 (per operation)
    """Open the store ``url`` names (see the module). A checkpoint.

    Raises:
        SettingsError: the URL names no store, or its backend's library is missing.
        StoreUnavailable: the store cannot be opened (a file that cannot be created).
    """
    scheme = urlsplit(check_url(url)).scheme
    if scheme == "memory":
        from .memory import memory_store

        return memory_store(urlsplit(url).netloc, timeout=timeout)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return await SQLiteStore.open(sqlite_path(url), timeout=timeout)
    if scheme in ("redis", "rediss"):
        try:
            from .redis import RedisStore
        except ImportError as exc:
            raise SettingsError(
                f"{url}: Redis needs `pip install towtruck[redis]` ({exc})"
            ) from None
        return await RedisStore.open(url, timeout=timeout)
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise SettingsError(
            f"{url}: PostgreSQL needs `pip install towtruck[postgres]` ({exc})"
        ) from None
    return await PostgresStore.open(url, timeout=timeout)
