"""Bloom filters of active actor ids, sized for a target false-positive rate.

Each node publishes a filter of the ids active on it (``/getbloom``); its peers pull
it and, before activating an id they own, ask (``/query``) only the nodes whose filter
may hold it, instead of every node. A false positive costs one query; a false negative
never happens, so an actor that stayed on its old node is always found.

The Node project used a fixed 1,024-bit filter, which answers "maybe" for everything
past a few hundred actors. Here the node keeps a *counting* filter (a byte per
position) sized for twice its actor count at a 1% false-positive rate: activation and
collection update it in O(k), and when the count outgrows the capacity, the filter is
rebuilt at double the size from the actor table (amortized O(1) per activation). A
filter rebuilt from scratch every ``bloom_interval`` would instead cost O(actors)
hashes every second. Peers receive only the bits.

Positions come from one 128-bit BLAKE2b digest split into two 64-bit halves
(Kirsch-Mitzenmacher double hashing: position i is ``h1 + i*h2 mod m``), so a peer's
filter of any size is tested with the same digest. This module is pure: no trio.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from hashlib import blake2b
from typing import Any, Final

__all__ = ["BloomFilter", "CountingBloom"]

#: Target false-positive rate of the filters this node publishes.
FALSE_POSITIVE_RATE: Final = 0.01
#: Smallest capacity (in ids) a filter is sized for.
MIN_CAPACITY: Final = 1024
#: Most positions per id a filter from a peer may ask for (this node's use 7): a
#: test of membership costs one step per position.
MAX_HASHES: Final = 32
_NONZERO_TO_ASCII: Final = bytes([0x30] + [0x31] * 255)  # count 0 -> "0", else "1"


def _hashes(actor_id: str) -> tuple[int, int]:
    digest = blake2b(actor_id.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1


def _size(capacity: int) -> tuple[int, int]:
    """Bits and hash count for ``capacity`` ids at :data:`FALSE_POSITIVE_RATE`."""
    bits = math.ceil(-capacity * math.log(FALSE_POSITIVE_RATE) / math.log(2) ** 2)
    bits = (bits + 7) // 8 * 8
    return bits, max(1, round(bits / capacity * math.log(2)))


class BloomFilter:
    """A read-only filter, as published by a node.

    Attributes:
        bits: Number of bit positions.
        hashes: Positions set per id.
        count: Ids the publisher had when it took the filter.
        version: Publisher's change counter, to skip fetching an unchanged filter.
    """

    __slots__ = ("_data", "bits", "count", "hashes", "version")

    def __init__(self, data: bytes, *, bits: int, hashes: int, count: int, version: int) -> None:
        if bits <= 0 or len(data) * 8 < bits or not 0 < hashes <= MAX_HASHES:
            raise ValueError("inconsistent bloom filter")
        self._data = data
        self.bits = bits
        self.hashes = hashes
        self.count = count
        self.version = version

    def __contains__(self, actor_id: str) -> bool:
        h1, h2 = _hashes(actor_id)
        data, bits = self._data, self.bits
        for i in range(self.hashes):
            position = (h1 + i * h2) % bits
            if not data[position >> 3] >> (position & 7) & 1:
                return False
        return True

    @classmethod
    def empty(cls, version: int) -> BloomFilter:
        """The filter of a node that holds no actors, at ``version``."""
        return cls(b"\0", bits=8, hashes=1, count=0, version=version)

    def to_payload(self) -> dict[str, Any]:
        """The JSON form ``/getbloom`` answers with."""
        return {
            "bits": self.bits,
            "hashes": self.hashes,
            "count": self.count,
            "version": self.version,
            "filter": base64.b64encode(self._data).decode(),
        }

    @classmethod
    def from_payload(cls, payload: Any) -> BloomFilter:
        """Read the JSON form back.

        Raises:
            ValueError: the payload is not a filter.
        """
        try:
            return cls(
                base64.b64decode(payload["filter"], validate=True),
                bits=int(payload["bits"]),
                hashes=int(payload["hashes"]),
                count=int(payload["count"]),
                version=int(payload["version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a bloom filter: {exc}") from None


class CountingBloom:
    """This node's filter of its active ids, updated as actors come and go."""

    def __init__(self, capacity: int = MIN_CAPACITY) -> None:
        self.count = 0
        self.version = 0
        self._resize(max(MIN_CAPACITY, capacity))
        self._snapshot: BloomFilter | None = None

    @property
    def capacity(self) -> int:
        """Ids the filter is sized for; past it, :meth:`needs_rebuild` says so."""
        return self._capacity

    def add(self, actor_id: str) -> None:
        """Count an id in. O(hashes)."""
        h1, h2 = _hashes(actor_id)
        counters, bits = self._counters, self._bits
        for i in range(self._hashes):
            position = (h1 + i * h2) % bits
            if counters[position] < 255:  # a saturated counter stays: only false positives
                counters[position] += 1
        self.count += 1
        self.version += 1

    def remove(self, actor_id: str) -> None:
        """Count an id out (it must have been added). O(hashes)."""
        h1, h2 = _hashes(actor_id)
        counters, bits = self._counters, self._bits
        for i in range(self._hashes):
            position = (h1 + i * h2) % bits
            if 0 < counters[position] < 255:
                counters[position] -= 1
        self.count -= 1
        self.version += 1

    def needs_rebuild(self) -> bool:
        """The count has outgrown the capacity, or shrunk far below it."""
        return self.count > self._capacity or (
            self._capacity > MIN_CAPACITY and self.count < self._capacity // 8
        )

    def rebuild(self, actor_ids: Iterable[str], count: int) -> None:
        """Resize for twice ``count`` ids and refill from the actor table."""
        self._resize(max(MIN_CAPACITY, 2 * count))
        self.count = 0
        for actor_id in actor_ids:
            self.add(actor_id)

    def snapshot(self) -> BloomFilter:
        """The filter's bits as they are now (cached until the next change)."""
        snapshot = self._snapshot
        if snapshot is None or snapshot.version != self.version:
            # Counters -> "0"/"1" text, most significant position first -> one int ->
            # little-endian bytes: bit p of the result is position p. All in C.
            text = self._counters.translate(_NONZERO_TO_ASCII)[::-1]
            data = int(text, 2).to_bytes(self._bits // 8, "little")
            snapshot = self._snapshot = BloomFilter(
                data, bits=self._bits, hashes=self._hashes, count=self.count, version=self.version
            )
        return snapshot

    def _resize(self, capacity: int) -> None:
        self._capacity = capacity
        self._bits, self._hashes = _size(capacity)
        self._counters = bytearray(self._bits)
        self.version += 1
