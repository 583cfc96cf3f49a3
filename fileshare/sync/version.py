"""Version vectors: one counter per peer that changed something, compared element-wise.

A file's vector says which changes it has seen; the folder's vector is the element-wise maximum over
its files (and the highest counter each peer has used). ``a.compare(b)`` tells whether ``a`` saw
everything ``b`` saw (NEWER), the reverse (OLDER), both (EQUAL) or neither (CONCURRENT: a conflict
unless the contents are equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from ..identity.peerid import PeerId


class Order(Enum):
    EQUAL = "equal"
    NEWER = "newer"
    OLDER = "older"
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class Version:
    """An immutable version vector: ``(peer, counter)`` pairs sorted by peer bytes, counters > 0."""

    counters: tuple[tuple[PeerId, int], ...] = ()

    @classmethod
    def of(cls, pairs: Mapping[PeerId, int] | Iterable[tuple[PeerId, int]]) -> Version:
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        best: dict[PeerId, int] = {}
        for peer, n in items:
            if n < 0:
                raise ValueError("version counters are non-negative")
            if n:
                best[peer] = max(n, best.get(peer, 0))
        return cls(tuple(sorted(best.items(), key=lambda kv: kv[0].bytes)))

    def as_dict(self) -> dict[PeerId, int]:
        return dict(self.counters)

    def get(self, peer: PeerId) -> int:
        for p, n in self.counters:
            if p == peer:
                return n
        return 0

    def with_counter(self, peer: PeerId, counter: int) -> Version:
        """This vector with ``peer``'s counter set to ``counter``."""
        d = self.as_dict()
        d[peer] = counter
        return Version.of(d)

    def merge(self, other: Version) -> Version:
        """Element-wise maximum."""
        return Version.of([*self.counters, *other.counters])

    def compare(self, other: Version) -> Order:
        mine, theirs = self.as_dict(), other.as_dict()
        greater = any(n > theirs.get(p, 0) for p, n in mine.items())
        less = any(n > mine.get(p, 0) for p, n in theirs.items())
        if greater and less:
            return Order.CONCURRENT
        if greater:
            return Order.NEWER
        if less:
            return Order.OLDER
        return Order.EQUAL

    def dominates(self, other: Version) -> bool:
        """True when this vector has seen everything ``other`` has (NEWER or EQUAL)."""
        return self.compare(other) in (Order.NEWER, Order.EQUAL)

    def __len__(self) -> int:
        return len(self.counters)
