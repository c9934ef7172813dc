"""The cluster key: who may read or change the cluster, and call between nodes.

When ``cluster_key`` is set, every request a node makes to a peer carries it in the
``towtruck-cluster-key`` header, and the routes that read or change the cluster
(``/addserver``, ``/removeserver``, ``/getbloom``, ``/updateblooms``, ``/rungc``, and the
node-to-node routes under ``/cluster/``) answer only requests that carry it: 401
without it, 403 with a wrong one. The key is compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Final

from .errors import Forbidden, Unauthorized

__all__ = ["CLUSTER_KEY_HEADER", "check_cluster_key", "key_headers"]

#: The header that carries the cluster key between nodes.
CLUSTER_KEY_HEADER: Final = "towtruck-cluster-key"
_HEADER: Final = CLUSTER_KEY_HEADER.encode()


def check_cluster_key(expected: str | None, headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Refuse a request that lacks the cluster key, if one is set.

    Raises:
        Unauthorized: no key in the request.
        Forbidden: a wrong key.
    """
    if expected is None:
        return
    for name, value in headers:
        if bytes(name).lower() == _HEADER:
            if hmac.compare_digest(bytes(value), expected.encode()):
                return
            raise Forbidden("wrong cluster key")
    raise Unauthorized(
        "this route is for the nodes of the cluster: send the cluster key in the"
        f" {CLUSTER_KEY_HEADER} header"
    )


def key_headers(key: str | None) -> dict[str, str]:
    """The headers a node sends to its peers: the key, if one is set."""
    return {CLUSTER_KEY_HEADER: key} if key is not None else {}
