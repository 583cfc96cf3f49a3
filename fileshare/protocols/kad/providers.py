"""Provider records: who provides which multihash, with expiry and caps (sans-io, ``now`` passed in).

``ProviderStore`` is the server side: records expire ``ttl`` (48 h) after their last ADD_PROVIDER,
addresses are served for ``addr_ttl`` (24 h) only, at most ``max_per_key`` providers per key (new
ones beyond it are refused; known ones may always refresh) and ``max_total`` records overall.

``Reprovider`` is the provider side: the keys we announce and when each is due again (22 h).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ...limits import (
    KAD_MAX_PROVIDER_RECORDS,
    KAD_MAX_PROVIDERS_PER_KEY,
    KAD_MAX_PROVIDERS_RETURNED,
    KAD_PROVIDER_ADDR_TTL,
    KAD_PROVIDER_REPUBLISH,
    KAD_PROVIDER_TTL,
)
from .messages import Peer


@dataclass(slots=True)
class ProviderRecord:
    peer_id: bytes
    addrs: tuple[bytes, ...]
    expires: float
    addrs_expire: float


class ProviderStore:
    """Provider records keyed by multihash bytes."""

    def __init__(
        self,
        *,
        ttl: float = KAD_PROVIDER_TTL,
        addr_ttl: float = KAD_PROVIDER_ADDR_TTL,
        max_per_key: int = KAD_MAX_PROVIDERS_PER_KEY,
        max_total: int = KAD_MAX_PROVIDER_RECORDS,
    ) -> None:
        self.ttl = ttl
        self.addr_ttl = addr_ttl
        self.max_per_key = max_per_key
        self.max_total = max_total
        self._by_key: dict[bytes, dict[bytes, ProviderRecord]] = {}
        self._total = 0
        self._earliest = float("inf")  # no record expires before this

    def __len__(self) -> int:
        return self._total

    def keys(self) -> list[bytes]:
        return list(self._by_key)

    def add(self, key: bytes, peer_id: bytes, addrs: Iterable[bytes], now: float) -> bool:
        """Store or refresh ``peer_id`` as a provider of ``key``; False if a cap refused it."""
        records = self._by_key.get(key)
        rec = records.get(peer_id) if records is not None else None
        addrs = tuple(addrs)
        expires = now + self.ttl
        if rec is not None:
            rec.expires = expires
            if addrs:
                rec.addrs = addrs
                rec.addrs_expire = now + self.addr_ttl
            return True
        if self._total >= self.max_total and now >= self._earliest:
            self.expire(now)
        if self._total >= self.max_total:
            return False
        records = self._by_key.get(key)
        if records is not None and len(records) >= self.max_per_key:
            self._drop_expired(key, records, now)
            if len(records) >= self.max_per_key:
                return False
        records = self._by_key.setdefault(key, records if records is not None else {})
        records[peer_id] = ProviderRecord(peer_id, addrs, expires, now + self.addr_ttl)
        self._total += 1
        self._earliest = min(self._earliest, expires)
        return True

    def get(self, key: bytes, now: float, limit: int = KAD_MAX_PROVIDERS_RETURNED) -> list[Peer]:
        """Live providers of ``key`` (most recently refreshed first), addrs while still fresh."""
        records = self._by_key.get(key)
        if records is None:
            return []
        self._drop_expired(key, records, now)
        live = sorted(records.values(), key=lambda r: r.expires, reverse=True)[:limit]
        return [Peer(r.peer_id, r.addrs if now < r.addrs_expire else ()) for r in live]

    def remove(self, key: bytes, peer_id: bytes) -> bool:
        records = self._by_key.get(key)
        if records is None or records.pop(peer_id, None) is None:
            return False
        self._total -= 1
        if not records:
            del self._by_key[key]
        return True

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many. Call periodically."""
        before = self._total
        for key in list(self._by_key):
            self._drop_expired(key, self._by_key[key], now)
        self._earliest = min(
            (r.expires for recs in self._by_key.values() for r in recs.values()),
            default=float("inf"),
        )
        return before - self._total

    def _drop_expired(self, key: bytes, records: dict[bytes, ProviderRecord], now: float) -> None:
        dead = [pid for pid, r in records.items() if r.expires <= now]
        for pid in dead:
            del records[pid]
        self._total -= len(dead)
        if not records:
            self._by_key.pop(key, None)


class Reprovider:
    """The keys this node provides and when each must be announced again."""

    def __init__(self, interval: float = KAD_PROVIDER_REPUBLISH) -> None:
        self.interval = interval
        self._next: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._next)

    def add(self, key: bytes, now: float) -> None:
        """Start providing ``key``; it is due at once."""
        self._next.setdefault(key, now)

    def remove(self, key: bytes) -> None:
        self._next.pop(key, None)

    def due(self, now: float) -> list[bytes]:
        return [key for key, t in self._next.items() if t <= now]

    def announced(self, key: bytes, now: float) -> None:
        """Record a completed announcement; the key is due again after ``interval``."""
        if key in self._next:
            self._next[key] = now + self.interval

    def next_due(self) -> float | None:
        return min(self._next.values(), default=None)
