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

from .address import Address
from .errors import InvalidAddress, SettingsError

__all__ = ["BYTES", "MIB", "SECONDS", "Settings", "bind_error"]

logger = logging.getLogger("towtruck")

SECONDS: Final = 1.0
BYTES: Final = 1
MIB: Final = 1024 * 1024 * BYTES

ENV_PREFIX: Final = "TOWTRUCK_"
#: How much ``towtruck serve`` and ``towtruck.run`` log.
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: What ``http_parser`` may be.
HTTP_PARSERS: Final = ("auto", "httptools", "h11")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a node can be told. Durations are seconds, sizes bytes.

    Attributes:
        host: Interface the HTTP server binds.
        port: TCP port the HTTP server binds; 0 picks a free one.
        peers: ``host:port`` of nodes to join at start.
        advertise: The ``host:port`` peers should use to reach this node; default the
            bound address (set it when binding ``0.0.0.0`` or behind NAT).
        heartbeat_interval: How often each peer is pinged.
        heartbeat_misses: Missed heartbeats in a row that take a peer out of placement.
        bloom_interval: How often the peers' bloom filters are fetched.
        cluster_key: A shared secret: when set, the routes that read or change the
            cluster (and calls between nodes) answer only requests that carry it.
        max_in_flight: Most calls from outside the node under way at once; past it,
            503.
        request_timeout: A client that takes longer than this to send a whole request
            body is disconnected.
        workers: Node processes ``towtruck serve`` runs behind one address and port,
            a local cluster (``auto`` on the command line: one per core).
        max_actors: Most actors held in memory; past it, the least recently used idle
            ones are collected, and when none is idle new activations answer 503.
        max_inactivity: An actor idle this long is collected.
        gc_interval: How often the collector runs.
        call_timeout: Deadline of a call, from when it is made to its answer.
        mailbox_size: Most calls that may wait for one actor; past it, 503.
        max_body: Largest request body accepted; past it, 413.
        shutdown_timeout: On shutdown, how long calls in flight and ``deactivate``
            hooks get before they are cancelled.
        keep_alive_timeout: An idle HTTP keep-alive connection is closed after this.
        blocked_warning: A turn that holds the event loop this long (blocking code
            in an actor) is logged, naming its actor and method.
        access_log: Log every HTTP request (costs throughput).
        http_parser: How the server towtruck starts reads HTTP: ``httptools`` (llhttp,
            the default where it installs), ``h11``, or ``auto`` for the first of those
            that is installed.
        debug: Put tracebacks in error responses (never in production).
        log_level: How much ``towtruck serve`` and :func:`towtruck.run` log to stderr
            (``debug``, ``info``, ``warning``, ``error``); a program embedding a node
            sets up logging itself.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    peers: tuple[str, ...] = ()
    advertise: str | None = None
    heartbeat_interval: float = 1 * SECONDS
    heartbeat_misses: int = 3
    bloom_interval: float = 1 * SECONDS
    cluster_key: str | None = dataclasses.field(default=None, repr=False)
    max_in_flight: int = 10_000
    request_timeout: float = 30 * SECONDS
    workers: int = 1
    max_actors: int = 1000
    max_inactivity: float = 60 * SECONDS
    gc_interval: float = 10 * SECONDS
    call_timeout: float = 30 * SECONDS
    mailbox_size: int = 1000
    max_body: int = 1 * MIB
    shutdown_timeout: float = 5 * SECONDS
    keep_alive_timeout: float = 5 * SECONDS
    blocked_warning: float = 1 * SECONDS
    access_log: bool = False
    http_parser: str = "auto"
    debug: bool = False
    log_level: str = "info"

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
                label = _FLAGS.get(name, "--" + name.replace("_", "-"))
                values[name] = _coerce(name, value, label)
        for name, value in kwargs.items():
            if name not in _KINDS:
                raise SettingsError(f"{name}: unknown setting; known: {_known()}")
            values[name] = _coerce(name, value, name)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (checked like the originals)."""
        for name in changes:
            if name not in _KINDS:
                raise SettingsError(f"{name}: unknown setting; known: {_known()}")
        return dataclasses.replace(self, **changes)


_KINDS: Final[dict[str, str]] = {
    "host": "host",
    "port": "port",
    "peers": "addresses",
    "advertise": "address",
    "heartbeat_interval": "seconds",
    "heartbeat_misses": "count",
    "bloom_interval": "seconds",
    "cluster_key": "secret",
    "max_in_flight": "count",
    "request_timeout": "seconds",
    "workers": "workers",
    "max_actors": "count",
    "max_inactivity": "seconds",
    "gc_interval": "seconds",
    "call_timeout": "seconds",
    "mailbox_size": "count",
    "max_body": "count",
    "shutdown_timeout": "seconds",
    "keep_alive_timeout": "seconds",
    "blocked_warning": "seconds",
    "access_log": "flag",
    "http_parser": "http_parser",
    "debug": "flag",
    "log_level": "log_level",
}

#: Command-line flags not named after their setting.
_FLAGS: Final = {"peers": "--peer"}

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
    "flag": _flag,
    "log_level": _log_level,
    "http_parser": _http_parser,
}
