"""The cluster key: who may read or change the cluster, and call between nodes.

When ``cluster_key`` is set, every request a node makes to a peer carries it in the
``towtruck-cluster-key`` header, and the routes that read or change the cluster
(``/addserver``, ``/removeserver``, ``/getbloom``, ``/updateblooms``, ``/rungc``, and the
node-to-node routes under ``/cluster/``) answer only requests that carry it: 401
without it, 403 with a wrong one. The key is compared in constant time. A refusal is
logged (at most every ``_COMPLAINT_SECONDS`` for each status), since it is most often
a node whose cluster key does not match this one's, which cannot join.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Iterable
from typing import Final

import trio

from ..errors import Forbidden, TowtruckError, Unauthorized
from .wire import CLUSTER_KEY_HEADER

__all__ = ["KeyRefusals", "check_cluster_key", "key_headers"]

_HEADER: Final = CLUSTER_KEY_HEADER.encode()
_COMPLAINT_SECONDS: Final = 10.0

logger = logging.getLogger("towtruck.cluster")
# When each kind of refusal (by status) was last logged, and how many since (per trio
# run: the clock is the run's).
_complained: trio.lowlevel.RunVar[dict[int, tuple[float, int]]] = trio.lowlevel.RunVar(
    "towtruck.credentials.complained"
)


def check_cluster_key(
    expected: str | None, headers: Iterable[tuple[bytes, bytes]], *, source: str = ""
) -> None:
    """Refuse a request that lacks the cluster key, if one is set. ``source``: who sent
    it, for the log line a refusal makes.

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
            raise _refused(Forbidden("wrong cluster key"), source)
    raise _refused(
        Unauthorized(
            "this route is for the nodes of the cluster: send the cluster key in the"
            f" {CLUSTER_KEY_HEADER} header"
        ),
        source,
    )


def _refused(error: TowtruckError, source: str) -> TowtruckError:
    """Log a refusal (not too often) and return the error to raise."""
    now = trio.current_time()
    try:
        complained = _complained.get()
    except LookupError:
        complained = {}
        _complained.set(complained)
    last, since = complained.get(error.status, (-math.inf, 0))
    if now - last < _COMPLAINT_SECONDS:
        complained[error.status] = (last, since + 1)
        return error
    complained[error.status] = (now, 0)
    logger.error(
        "refused a request for the cluster%s (%d %s%s): a node whose cluster key does"
        " not match this node's cannot join it; give every node the same --cluster-key",
        f" from {source}" if source else "",
        error.status,
        error.message,
        f"; {since} more since the last such line" if since else "",
    )
    return error


def key_headers(key: str | None) -> dict[str, str]:
    """The headers a node sends to its peers: the key, if one is set."""
    return {CLUSTER_KEY_HEADER: key} if key is not None else {}


class KeyRefusals:
    """The peers whose last answer refused this node's cluster key (401 or 403: the
    keys differ), and why. Each refusal is logged, loudly and again while it lasts, at
    most every ``_COMPLAINT_SECONDS`` per peer."""

    def __init__(self) -> None:
        #: The refusal, by peer, as ``"403 Forbidden: ..."``.
        self.why: dict[str, str] = {}
        self._complained: dict[str, float] = {}

    def refused(self, peer: str, exc: TowtruckError) -> None:
        """``peer`` refused this node's key with ``exc``."""
        why = f"{exc.status} {type(exc).__name__}: {exc.message}"
        self.why[peer] = why
        now = trio.current_time()
        if now - self._complained.get(peer, -math.inf) >= _COMPLAINT_SECONDS:
            self._complained[peer] = now
            logger.error(
                "%s refused this node's cluster key (%s): this node's cluster key does"
                " not match; give every node of the cluster the same --cluster-key",
                peer,
                why,
            )

    def cleared(self, peer: str) -> None:
        """``peer`` answered: whatever it refused before, it takes the key now."""
        self.why.pop(peer, None)
