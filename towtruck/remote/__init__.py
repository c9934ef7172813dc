"""The client for code outside the cluster: ``towtruck.connect`` and
``towtruck.SyncClient``.

A program that is not a node (a web app, a script, a worker on asyncio) calls actors
over HTTP. Any node would forward a call to the node that owns its actor; this client
saves that hop by placing calls as the nodes do: it learns the members from a node's
``/health`` and hashes each id over them with the nodes' own rendezvous function
(:mod:`towtruck.cluster.placement`), so a call goes straight to its actor's node.

- :mod:`.view`: what the client knows and decides (members, owner, retries, errors);
  no I/O, shared by both clients.
- :mod:`.client`: :func:`connect` and :class:`RemoteClient`, on trio or asyncio
  (httpx and anyio).
- :mod:`.sync`: :class:`SyncClient`, blocking, for threads.
"""

from .client import RemoteClient as RemoteClient
from .client import connect as connect
from .sync import SyncClient as SyncClient
from .view import RemoteStatistics as RemoteStatistics

__all__ = ["RemoteClient", "RemoteStatistics", "SyncClient", "connect"]
