"""Giving up the activations a peer holds too, so that one copy of each actor stays.

Two cases. ``ALL``, after this node was taken for down: meanwhile its peers activated
the ids it owned afresh when they were called; those activations have served every
call since, so they are the ones to keep (Orleans has a node declared dead restart, for
the same reason). Ids that nobody called meanwhile stay here. ``PLACEMENT``, when peers
joined (two clusters merged, a node added back): each node keeps its copy only if
placement prefers it to the peer's (the higher rendezvous score), so every node reaches
the same verdict and one copy stays.
"""

from __future__ import annotations

import enum
import logging

from ..activation import DeactivationReason
from ..catalog import Catalog
from . import placement
from .directory import Directory

__all__ = ["Duplicates", "give_up"]

logger = logging.getLogger("towtruck.cluster")


class Duplicates(enum.Enum):
    """Which activations a node gives up when it finds an actor active elsewhere too."""

    NONE = "none"  #: no check is due
    PLACEMENT = "placement"  #: nodes joined: the copy where placement prefers stays
    ALL = "all"  #: it was taken for down: the copies activated meanwhile elsewhere stay


async def give_up(
    me: str,
    catalog: Catalog,
    directory: Directory,
    which: Duplicates,
    among: frozenset[str] | None = None,
) -> None:
    """Deactivate the actors of ``catalog`` that a peer holds too (see the module's
    docstring). ``ALL`` fetches the peers' filters first; ``PLACEMENT`` uses the
    filters just fetched, and looks only at the peers ``among`` (those that joined)."""
    if which is Duplicates.ALL:
        await directory.refresh(fresh=True)
        duplicates = await directory.duplicates()
    else:
        joined = among or frozenset()
        duplicates = await directory.duplicates(
            yield_to=lambda actor_id, peer: peer in joined and _prefers(me, actor_id, peer)
        )
    for actor_id in duplicates:
        activation = catalog.get(actor_id)
        if activation is not None:
            activation.request_deactivation(DeactivationReason.DUPLICATE)
    if duplicates:
        logger.warning(
            "gave up %d actors active on another node too (%s)",
            len(duplicates),
            "activated there while this node was taken for down"
            if which is Duplicates.ALL
            else "the cluster's views came together",
        )


def _prefers(me: str, actor_id: str, peer: str) -> bool:
    """Whether placement prefers ``peer`` to ``me`` for ``actor_id``."""
    return (placement.score(peer, actor_id), peer) > (placement.score(me, actor_id), me)
