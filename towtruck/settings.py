"""A node's settings: one frozen object, built from keyword arguments, command-line
flags and ``TOWTRUCK_*`` environment variables.

Precedence, highest first: keyword arguments, command-line flags, environment, the
defaults below. Every value is checked when the object is built; a bad value, or an
unknown keyword, raises :class:`~towtruck.errors.SettingsError` with a message naming
the keyword, flag or variable it came from, so a node refuses to start rather than run
with a setting it misread. An unknown ``TOWTRUCK_*`` variable is only warned about
(once per process, suggesting the closest setting): the environment is shared with
the rest of a deployment, which may name its own variables so.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import math
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import InvalidAddress, SettingsError
from .ids import Address

__all__ = [
    "BYTES",
    "MIB",
    "SECONDS",
    "STORE_SCHEMES",
    "Settings",
    "bind_error",
    "check_store_url",
    "flag",
    "sqlite_path",
]

logger = logging.getLogger("towtruck")

SECONDS: Final = 1.0
BYTES: Final = 1
MIB: Final = 1024 * 1024 * BYTES

ENV_PREFIX: Final = "TOWTRUCK_"
#: How much ``towtruck serve`` and ``towtruck.run`` log.
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: The schemes of the state stores (see :mod:`towtruck.storage`).
STORE_SCHEMES: Final = ("sqlite", "redis", "rediss", "postgresql", "postgres", "memory")
#: What ``http_parser`` may be.
HTTP_PARSERS: Final = ("auto", "httptools", "h11")


def _setting(default: Any, kind: str, help: str, **options: Any) -> Any:
    """A field of :class:`Settings`: its default, how a value is checked (``kind``, a
    key of ``_CHECKS``) and what it means (``help``, shown by ``towtruck serve --help``
    and in the class's documentation). Written once here; flags, variables, help and
    checks derive from it."""
    return dataclasses.field(default=default, metadata={"kind": kind, "help": help}, **options)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a node can be told. Durations are seconds, sizes bytes.

    Each setting is a keyword argument, a ``towtruck serve`` flag (``max_actors`` is
    ``--max-actors``; ``peers`` is ``--peer``, repeated) and a ``TOWTRUCK_<NAME>``
    variable (``TOWTRUCK_MAX_ACTORS``).
    """

    host: str = _setting("127.0.0.1", "host", "Interface the HTTP server binds.")
    port: int = _setting(8080, "port", "TCP port the HTTP server binds; 0 picks a free one.")
    peers: tuple[str, ...] = _setting(
        (), "addresses", "host:port of nodes to join at start (TOWTRUCK_PEERS=a:1,b:2)."
    )
    advertise: str | None = _setting(
        None,
        "address",
        "The host:port peers reach this node at; default the bound address (set it when"
        " binding 0.0.0.0 or behind NAT).",
    )
    membership: str = _setting(
        "gossip:",
        "membership_url",
        "Where the cluster keeps its membership decisions: gossip: (between the nodes"
        " alone), or a table in redis://host:port/db, postgresql://user@host/db or"
        " etcd://host:port (?cluster=NAME to share one store between clusters); with a"
        " table, a node joins by writing its row: no --peer needed.",
    )
    peer_dns: str | None = _setting(
        None,
        "address",
        "NAME:PORT of a DNS name whose A/AAAA records are the cluster's nodes (a Kubernetes"
        " headless Service), resolved every heartbeat interval; the addresses found are"
        " joined.",
    )
    heartbeat_interval: float = _setting(
        1 * SECONDS, "seconds", "How often each node probes a few of its peers."
    )
    heartbeat_misses: int = _setting(
        3,
        "count",
        "A peer that fails a probe, and the same probe sent through others, is suspected;"
        " suspected this many heartbeat intervals less one (4 log10 N at least, in a"
        " cluster of N nodes larger than probe_peers + 1), it is out of placement.",
    )
    probe_peers: int = _setting(
        3,
        "count",
        "Peers each node probes per heartbeat interval (all of them, if it has no more);"
        " what it finds spreads by gossip, so a node's cost does not grow with the cluster.",
    )
    indirect_probes: int = _setting(
        3, "count", "Peers asked to probe a peer that did not answer, before it is suspected."
    )
    partition: str = _setting(
        "keep-majority",
        "partition",
        "What a node does when it reaches fewer than half of the cluster: keep-majority"
        " (it activates no actor, answers 503 for ids it would activate, and gives up its"
        " actors, so the majority can take them over) or serve (both sides go on; an id"
        " may then be active on each side until they meet again).",
    )
    bloom_interval: float = _setting(
        1 * SECONDS, "seconds", "How often the peers' bloom filters are fetched."
    )
    cluster_key: str | None = _setting(
        None,
        "secret",
        "A shared secret: when set, the routes that read or change the cluster (and calls"
        " between nodes) answer only requests that carry it.",
        repr=False,
    )
    protocol_timeout: float = _setting(
        5 * SECONDS,
        "seconds",
        "How long a node waits for a peer's answer to a cluster message (a join, a leave,"
        " a heartbeat, gossip of decisions).",
    )
    query_timeout: float = _setting(
        2 * SECONDS,
        "seconds",
        "How long a node waits for a peer to say whether it holds an actor; if it has not"
        " said, the call fails (503) rather than activate a second copy (partition=serve:"
        " it is taken not to hold it).",
    )
    suspicion: float | None = _setting(
        None,
        "seconds_or_auto",
        "How long a peer that stopped answering is still asked about the actors it may"
        " hold (default: ten heartbeat intervals).",
    )
    forget_after: float | None = _setting(
        None,
        "seconds_or_auto",
        "A peer down, or a removal, this old is forgotten: the peer rejoins like a new one"
        " (default: 100 heartbeat intervals, at least 600 s).",
    )
    lane_retry_after: float = _setting(
        60 * SECONDS,
        "seconds",
        "A peer that refused a lane (it cannot take one) gets its calls over HTTP for this"
        " long before a lane is tried again.",
    )
    max_in_flight: int = _setting(
        10_000, "count", "Most calls from outside the node under way at once; past it, 503."
    )
    request_timeout: float = _setting(
        30 * SECONDS,
        "seconds",
        "A client that takes longer than this to send a whole request body is disconnected.",
    )
    workers: int = _setting(
        1,
        "workers",
        "Node processes towtruck serve runs behind one address and port, a local cluster"
        " (auto: one per core).",
    )
    max_actors: int = _setting(
        1000,
        "count",
        "Most actors held in memory; past it, the least recently used idle ones are"
        " collected, and when none is idle new activations answer 503.",
    )
    max_inactivity: float = _setting(
        60 * SECONDS, "seconds", "An actor idle this long is collected."
    )
    gc_interval: float = _setting(10 * SECONDS, "seconds", "How often the collector runs.")
    call_timeout: float = _setting(
        30 * SECONDS, "seconds", "Deadline of a call, from when it is made to its answer."
    )
    mailbox_size: int = _setting(
        1000, "count", "Most calls that may wait for one actor; past it, 503."
    )
    max_body: int = _setting(1 * MIB, "count", "Largest request body accepted; past it, 413.")
    shutdown_timeout: float = _setting(
        5 * SECONDS,
        "seconds",
        "On shutdown, how long calls in flight and deactivate hooks get before they are cancelled.",
    )
    keep_alive_timeout: float = _setting(
        5 * SECONDS, "seconds", "An idle HTTP keep-alive connection is closed after this."
    )
    blocked_warning: float = _setting(
        1 * SECONDS,
        "seconds",
        "A turn that holds the event loop this long (blocking code in an actor) is logged,"
        " naming its actor and method.",
    )
    state_store: str = _setting(
        "sqlite:///towtruck-state.sqlite3",
        "store_url",
        "Where actors keep persistent state: sqlite:///path (the file is created when an"
        " actor first asks for state), redis://host:port/db, postgresql://user@host/db, or"
        " memory: (lost with the process; open_runtime and cluster() use it by default).",
    )
    store_timeout: float = _setting(
        5 * SECONDS,
        "seconds",
        "How long one read or write of the state store may take; past it, the call fails"
        " with 503 StoreUnavailable and nothing is written.",
    )
    reminder_refresh: float = _setting(
        1 * SECONDS,
        "seconds",
        "How often each node loads the reminders of its buckets that fall due soon (a"
        " reminder whose node was lost fires from its new owner within the failure"
        " detector's time and this).",
    )
    min_reminder_period: float = _setting(
        1 * SECONDS, "seconds", "The shortest period a durable reminder may have."
    )
    access_log: bool = _setting(False, "flag", "Log every HTTP request (costs throughput).")
    metrics: bool = _setting(
        True,
        "flag",
        "Count every call's outcome and latency by method, for /metrics and /dashboard"
        " (--no-metrics: only the node's totals are kept).",
    )
    http_parser: str = _setting(
        "auto",
        "http_parser",
        "How the server towtruck starts reads HTTP: httptools (llhttp, the default where"
        " it installs), h11, or auto for the first of those that is installed.",
    )
    debug: bool = _setting(
        False, "flag", "Put tracebacks in error responses (never in production)."
    )
    log_level: str = _setting(
        "info",
        "log_level",
        "How much towtruck serve and towtruck.run log to stderr: debug, info, warning,"
        " error (a program embedding a node sets up logging itself).",
    )
    log_format: str = _setting(
        "text",
        "log_format",
        "How towtruck serve and towtruck.run write log lines: text, or json (one object"
        " a line, for log shippers).",
    )

    def __post_init__(self) -> None:
        for name in _KINDS:
            value = _coerce(name, getattr(self, name), name)
            object.__setattr__(self, name, value)

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Settings:
        """Build settings from the environment, command-line flags and keywords.

        Args:
            environ: Where to read ``TOWTRUCK_*`` variables; ``os.environ`` if None.
            flags: Values parsed from the command line, by setting name; None values
                mean "not given".
            **kwargs: Settings by name; they override flags and the environment.

        An unknown ``TOWTRUCK_*`` variable is ignored, with a warning (logger
        ``towtruck``, once per variable and process) naming the closest setting.

        Raises:
            SettingsError: an unknown keyword or a bad value, named by its source.
        """
        values: dict[str, Any] = {}
        environ = os.environ if environ is None else environ
        for key, text in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _KINDS:
                _warn_unknown(key)
                continue
            values[name] = _coerce(name, text, key)
        for name, value in (flags or {}).items():
            if value is not None:
                values[name] = _coerce(name, value, flag(name))
        for name, value in kwargs.items():
            if name not in _KINDS:
                raise SettingsError(f"{name}: unknown setting; known: {_known()}")
            values[name] = _coerce(name, value, name)
        return cls(**values)

    @property
    def shutdown_budget(self) -> float:
        """Longest a graceful stop of a node takes, however it runs: leaving the
        cluster (``protocol_timeout``), the calls in flight and the ``deactivate``
        hooks (``shutdown_timeout`` each), then the HTTP requests in flight
        (``shutdown_timeout`` more); what is left then is cancelled."""
        return self.protocol_timeout + 3 * self.shutdown_timeout + 1

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (checked like the originals)."""
        for name in changes:
            if name not in _KINDS:
                raise SettingsError(f"{name}: unknown setting; known: {_known()}")
        return dataclasses.replace(self, **changes)


#: How each setting is checked, by name (see ``_CHECKS``).
_KINDS: Final[dict[str, str]] = {
    field.name: field.metadata["kind"] for field in dataclasses.fields(Settings)
}

#: Command-line flags not named after their setting.
_FLAGS: Final = {"peers": "--peer"}


def flag(name: str) -> str:
    """The ``towtruck serve`` flag of a setting: ``--max-actors`` for ``max_actors``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


#: The unknown ``TOWTRUCK_*`` variables warned about so far in this process.
_warned: set[str] = set()


def _known() -> str:
    return ", ".join(sorted(_KINDS))


def _warn_unknown(key: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    name = key[len(ENV_PREFIX) :].lower()
    close = difflib.get_close_matches(name, _KINDS, n=1)
    hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
    logger.warning("%s is not a towtruck setting: ignored%s", key, hint)


def bind_error(settings: Settings, exc: OSError) -> SettingsError:
    """The error for a node that cannot listen on ``settings.host:port``: it names the
    setting at fault and its value (details ``setting``, ``value``, ``reason``), so the
    command line can say ``--port 8081: address already in use``."""
    if exc.errno == errno.EADDRINUSE:
        setting, reason = "port", "address already in use"
    elif exc.errno == errno.EACCES:
        setting, reason = "port", "permission denied (ports below 1024 need privileges)"
    elif isinstance(exc, socket.gaierror):
        setting, reason = "host", "the name does not resolve to an address"
    elif exc.errno == errno.EADDRNOTAVAIL:
        setting, reason = "host", "not an address of this machine"
    else:
        setting, reason = "host", f"cannot listen on port {settings.port}: {exc.strerror or exc}"
    value = getattr(settings, setting)
    return SettingsError(
        f"{setting} {value}: {reason}", setting=setting, value=value, reason=reason
    )


def _coerce(name: str, value: Any, label: str) -> Any:
    """Check one setting (parsing it first if it came as text) and return it."""
    kind = _KINDS[name]
    try:
        return _CHECKS[kind](value)
    except (TypeError, ValueError, InvalidAddress) as exc:
        message = exc.message if isinstance(exc, InvalidAddress) else str(exc)
        raise SettingsError(f"{label}: {message}", setting=name) from None


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _whole(value: Any, what: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"expected {what}, got {value!r}")


def _count(value: Any) -> int:
    count = _whole(value, "a whole number")
    if count < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return count


def _workers(value: Any) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return _count(value)


def _port(value: Any) -> int:
    port = _whole(value, "a port number")
    if not 0 <= port <= 65535:
        raise ValueError(f"expected a port from 0 to 65535, got {value!r}")
    return port


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a host name or IP address, got {value!r}")
    Address.parse(f"[{value}]:1" if ":" in value else f"{value}:1")
    return value


def _addresses(value: Any) -> tuple[str, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, Iterable):
        items = value
    else:
        raise TypeError(f"expected host:port addresses, got {value!r}")
    return tuple(str(Address.parse(str(item))) for item in items)


def _address(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(Address.parse(str(value)))


def _secret(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isprintable() or len(value) < 16:
        raise ValueError("expected at least 16 printable characters")
    return value


def _log_level(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in LOG_LEVELS:
        return value.strip().lower()
    raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")


def _http_parser(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in HTTP_PARSERS:
        return value.strip().lower()
    raise ValueError(f"expected one of {', '.join(HTTP_PARSERS)}, got {value!r}")


def sqlite_path(url: str) -> str:
    """The file an SQLite store URL names: ``sqlite:///a/b`` is the relative path
    ``a/b``, ``sqlite:////a/b`` the absolute ``/a/b`` (SQLAlchemy's reading)."""
    return url.removeprefix("sqlite://").removeprefix("/")


def check_store_url(value: Any) -> str:
    """``value`` if it is a state store URL (see :mod:`towtruck.storage`).

    Raises:
        ValueError: it names no store, or an SQLite URL names no file.
    """
    scheme = value.partition(":")[0] if isinstance(value, str) else ""
    if scheme not in STORE_SCHEMES:
        raise ValueError(
            f"expected a state store URL (sqlite:///path, redis://host:port/db,"
            f" postgresql://user@host/db or memory:), got {value!r}"
        )
    if scheme == "sqlite" and not sqlite_path(value):
        raise ValueError(
            f"expected sqlite:///relative/path or sqlite:////absolute/path, got {value!r}"
        )
    return str(value)


def _seconds_or_auto(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    return _seconds(value)


_TABLE_SCHEMES: Final = ("gossip", "memory", "redis", "rediss", "postgresql", "postgres", "etcd")


def _membership_url(value: Any) -> str:
    text = str(value).strip()
    scheme = urlsplit(text).scheme
    if scheme not in _TABLE_SCHEMES or (scheme not in ("gossip",) and not urlsplit(text).netloc):
        raise ValueError(
            f"expected gossip:, redis://host:port/db, postgresql://user@host/db or"
            f" etcd://host:port, got {value!r}"
        )
    return text


def _log_format(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("text", "json"):
        raise ValueError(f"expected text or json, got {value!r}")
    return text


def _partition(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("keep-majority", "serve"):
        raise ValueError(f"expected keep-majority or serve, got {value!r}")
    return text


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


_CHECKS: Final = {
    "host": _host,
    "port": _port,
    "addresses": _addresses,
    "address": _address,
    "secret": _secret,
    "count": _count,
    "workers": _workers,
    "seconds": _seconds,
    "seconds_or_auto": _seconds_or_auto,
    "flag": _flag,
    "log_level": _log_level,
    "log_format": _log_format,
    "partition": _partition,
    "membership_url": _membership_url,
    "http_parser": _http_parser,
    "store_url": check_store_url,
}


def _document(cls: type[Settings]) -> None:
    """Add each setting's help to the class's documentation, as its attributes."""
    lines = [f"        {field.name}: {field.metadata['help']}" for field in dataclasses.fields(cls)]
    cls.__doc__ = f"{cls.__doc__}\n    Attributes:\n" + "\n".join(lines) + "\n"


_document(Settings)


def redact_url(url: str) -> str:
    """``url`` without a password (in its user part or its query), as errors and logs
    may show it."""
    parts = urlsplit(url)
    if parts.password is None and "password" not in parts.query:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"], safe="/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
