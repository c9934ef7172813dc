"""Names, checked once: ``host:port`` addresses of nodes, and actor ids."""

from __future__ import annotations

import ipaddress
import re
from typing import Final, NamedTuple

from .errors import InvalidActorId, InvalidAddress

__all__ = ["MAX_ID_LENGTH", "Address", "check_actor_id"]

#: Longest actor id accepted, in characters.
MAX_ID_LENGTH: Final = 256

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


class Address(NamedTuple):
    """A node's address: a host name or IP literal, and a TCP port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``host:port`` (``[v6]:port`` for IPv6 literals).

        Raises:
            InvalidAddress: the text is not a host and a port from 1 to 65535.
        """
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise InvalidAddress(f"{text!r} is not an address: expected host:port", address=text)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if not _is_ip(host, version=6):
                raise InvalidAddress(f"{text!r} has a bad IPv6 literal", address=text)
        elif not (_is_ip(host, version=4) or _HOSTNAME.fullmatch(host)):
            raise InvalidAddress(f"{text!r} has a bad host name {host!r}", address=text)
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InvalidAddress(
                f"{text!r} has a bad port {port_text!r}: expected a number from 1 to 65535",
                address=text,
            )
        return cls(host.lower(), int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Reachable from this machine only (``localhost``, ``127.x``, ``::1``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def url(self) -> str:
        """The node's base URL, ``http://host:port``."""
        return f"http://{self}"


def _is_ip(text: str, *, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def check_actor_id(actor_id: object) -> str:
    """Return a valid actor id as a string.

    Raises:
        InvalidActorId: empty, longer than :data:`MAX_ID_LENGTH`, holding control or
            other unprintable characters, or neither a string nor an int.
    """
    if isinstance(actor_id, int) and not isinstance(actor_id, bool):
        return str(actor_id)
    if not isinstance(actor_id, str):
        raise InvalidActorId(f"an actor id is a string, not {type(actor_id).__name__}")
    if not actor_id or len(actor_id) > MAX_ID_LENGTH or not actor_id.isprintable():
        raise InvalidActorId(
            f"bad actor id {actor_id[:MAX_ID_LENGTH]!r}: expected 1 to {MAX_ID_LENGTH}"
            " printable characters",
            actor=actor_id[:MAX_ID_LENGTH],
        )
    return actor_id
