"""Which node owns an actor id: rendezvous (highest-random-weight) hashing.

Each node scores every id with a hash of (node, id); the node with the highest score
owns the id. Every node that knows the same members computes the same owner with no
coordination, and when a member joins or leaves, only the ids it wins or held move
(about 1/n of them), which keeps the actors that live elsewhere where they are.

Alternatives that lost: a modulo hash moves almost every id on any change; a
consistent-hash ring moves as few but needs virtual nodes to spread evenly over a
handful of members, where rendezvous is even by construction and, at the few dozen
nodes a towtruck cluster has, costs one short hash per member per lookup.

The hash is BLAKE2b, not Python's ``hash()``: ``hash(str)`` is salted per process, and
every node must agree. This module is pure: it imports no trio.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from hashlib import blake2b

__all__ = ["Keys", "owner", "score"]


def score(member: str, actor_id: str) -> int:
    """The weight of ``member`` for ``actor_id``: the same on every node, every run."""
    digest = blake2b(f"{member}\x00{actor_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(actor_id: str, members: Iterable[str]) -> str:
    """The member that owns ``actor_id``: the highest score, ties to the lower name.

    Raises:
        ValueError: ``members`` is empty.
    """
    best = max(members, key=lambda member: (score(member, actor_id), member), default=None)
    if best is None:
        raise ValueError("placement needs at least one member")
    return best


class Keys:
    """A fixed set of keys (the reminders' buckets) and which of them a member owns,
    as :func:`owner` would say for each, with every member's scores remembered: when
    the members change, only the new ones are hashed (a cluster of N nodes would
    otherwise hash every key N times over at each change)."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = tuple(keys)
        self._scores: dict[str, list[int]] = {}
        self._owned: tuple[tuple[str, ...], str, frozenset[int]] | None = None

    def owned(self, member: str, members: tuple[str, ...]) -> frozenset[int]:
        """The positions of the keys that ``member`` owns among ``members`` (none if
        it is not one of them); remembered until ``members`` change."""
        if self._owned is not None and self._owned[:2] == (members, member):
            return self._owned[2]
        scores = self._scores
        for gone in scores.keys() - set(members):
            del scores[gone]
        for new in members:
            if new not in scores:
                scores[new] = _scores(new, self._keys)
        mine = scores.get(member)
        owned: frozenset[int] = frozenset()
        if mine is not None:
            others = [scores[m] for m in members if m != member]
            best = [max(column) for column in zip(*others, strict=True)] if others else None
            owned = frozenset(
                i
                for i, key in enumerate(self._keys)
                if best is None
                or mine[i] > best[i]
                or (mine[i] == best[i] and owner(key, members) == member)
            )
        self._owned = (members, member, owned)
        return owned


@lru_cache(maxsize=1024)
def _scores(member: str, keys: tuple[str, ...]) -> list[int]:
    """``member``'s score for each of ``keys``, shared by every :class:`Keys` of the
    process (a simulation runs hundreds of nodes in one, each hashing every member)."""
    return [score(member, key) for key in keys]
