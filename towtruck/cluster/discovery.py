"""Finding peers by DNS: a Kubernetes headless Service's records (``--peer-dns``).

A headless Service has an A (or AAAA) record per ready pod; resolving it every
heartbeat interval finds the pods as they come and go, with no access to the
Kubernetes API (no RBAC). The addresses found are joined as ``--peer`` seeds would be:
an address never heard of is added and sent a heartbeat; its answer puts it in
placement. Addresses that disappear from the records are not removed for that: the
failure detector decides deaths, as for any peer, and a node that stops gracefully
leaves by itself.
"""

from __future__ import annotations

import socket

import trio

from ..ids import Address

__all__ = ["resolve"]


async def resolve(name: str, port: int) -> list[str]:
    """``host:port`` for every A and AAAA record of ``name``, sorted. A checkpoint.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
    """
    records = await trio.socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({str(Address(str(record[4][0]), port)) for record in records})
