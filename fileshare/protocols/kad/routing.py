"""Kademlia routing table: 256 k-buckets over XOR distance of sha256(peer id bytes).

Bucket ``i`` holds peers whose key shares exactly ``i`` leading bits with ours. Only DHT servers
enter. Eviction is least-recently-seen with a liveness check: when a bucket is full, ``try_add``
answers ``PING_NEEDED`` naming the oldest peer; the caller pings it and reports with
``ping_result`` (alive: the old peer stays and the newcomer is dropped; dead: it is replaced).

IP diversity (IPFS kad-dht spec): peers are grouped by IPv4 /16 (IPv6 /32, a stand-in for ASN
grouping; legacy class-A /8 grouping is not done). At most ``per_bucket`` peers of one group per
bucket and ``per_table`` per table; a peer is refused if any of its addresses is over a limit.
Loopback addresses (127.0.0.0/8, ::1) are exempt when ``exempt_loopback`` is set.

Sans-io: every method that depends on time takes ``now`` (seconds, any monotonic clock).
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from importlib import resources
from ipaddress import IPv4Address, IPv6Address

from ...errors import DecodeError
from ...limits import (
    KAD_IP_GROUP_PER_BUCKET,
    KAD_IP_GROUP_PER_TABLE,
    KAD_K,
    KAD_LIVENESS_GRACE,
    KAD_MAX_REFRESH_CPL,
    KAD_REFRESH_INTERVAL,
    KAD_RPC_TIMEOUT,
)
from ...wire.varint import decode_varint
from .messages import Peer

KEY_BITS = 256
_P_IP4 = 0x04
_P_IP6 = 0x29


@lru_cache(maxsize=8192)
def kad_key(data: bytes) -> int:
    """The Kademlia identifier of a peer id or record key: sha256 as a big-endian int."""
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def common_prefix_len(a: int, b: int) -> int:
    """Leading bits two 256-bit keys share (256 when equal)."""
    return KEY_BITS - (a ^ b).bit_length()


# --- IP diversity ---

IpGroup = tuple[int, int]  # (ip version, address >> (bits - prefix))


@dataclass(frozen=True, slots=True)
class DiversityConfig:
    """IP diversity limits; ``enabled=False`` turns the filter off."""

    per_bucket: int = KAD_IP_GROUP_PER_BUCKET
    per_table: int = KAD_IP_GROUP_PER_TABLE
    ipv4_prefix: int = 16
    ipv6_prefix: int = 32
    exempt_loopback: bool = True
    enabled: bool = True


def leading_ip(addr: bytes) -> IPv4Address | IPv6Address | None:
    """The IP of a binary multiaddr that starts with /ip4 or /ip6, else None."""
    try:
        code, pos = decode_varint(addr, 0)
    except DecodeError:
        return None
    if code == _P_IP4 and len(addr) >= pos + 4:
        return IPv4Address(addr[pos : pos + 4])
    if code == _P_IP6 and len(addr) >= pos + 16:
        return IPv6Address(addr[pos : pos + 16])
    return None


def ip_groups(addrs: Iterable[bytes], config: DiversityConfig) -> frozenset[IpGroup]:
    """The diversity groups a peer's addresses fall in (empty when the filter is off)."""
    return _ip_groups(tuple(addrs), config)


@lru_cache(maxsize=4096)
def _ip_groups(addrs: tuple[bytes, ...], config: DiversityConfig) -> frozenset[IpGroup]:
    if not config.enabled:
        return frozenset()
    groups: set[IpGroup] = set()
    for addr in addrs:
        ip = leading_ip(addr)
        if ip is None or (config.exempt_loopback and ip.is_loopback):
            continue
        if ip.version == 4:
            groups.add((4, int(ip) >> (32 - config.ipv4_prefix)))
        else:
            groups.add((6, int(ip) >> (128 - config.ipv6_prefix)))
    return frozenset(groups)


# --- refresh keys ---

_PREFIX_BITS = 16
_prefix_table: list[bytes] = []
_prefix_lock = threading.Lock()
_shipped: bytes | None = None  # preimages.bin once read (b"": not shipped)


def _preimage(counter: int) -> bytes:
    return b"\x12\x20" + counter.to_bytes(32, "big")


def compute_preimage_counters() -> list[int]:
    """For every 16-bit prefix, the smallest counter whose key's sha256 starts with that prefix.

    About 760,000 sha256 calls (half a CPU-second or more), which is why the result ships with the
    package as ``preimages.bin`` (3 bytes per prefix) and this only runs if that file is missing.
    """
    table: list[int | None] = [None] * (1 << _PREFIX_BITS)
    missing = len(table)
    counter = 0
    sha = hashlib.sha256
    while missing:
        digest = sha(_preimage(counter)).digest()
        slot = digest[0] << 8 | digest[1]
        if table[slot] is None:
            table[slot] = counter
            missing -= 1
        counter += 1
    return [c for c in table if c is not None]


def _shipped_data() -> bytes | None:
    """``preimages.bin`` (3 bytes per prefix), or None if it is missing or the wrong size."""
    try:
        data = (resources.files(__package__) / "preimages.bin").read_bytes()
    except (OSError, TypeError):
        return None
    return data if len(data) == 3 << _PREFIX_BITS else None


def _load_preimage_counters() -> list[int] | None:
    data = _shipped_data()
    if data is None:
        return None
    return [int.from_bytes(data[i : i + 3], "big") for i in range(0, len(data), 3)]


def _preimage_for(prefix: int) -> bytes:
    """A sha256-multihash-shaped key whose kad key starts with the 16-bit ``prefix``.

    Read from the shipped table (one entry decoded per call, so a process that refreshes a few
    buckets does not decode 65,536); if the file is missing, the whole table is computed once,
    built whole and published under a lock (refresh keys are made in worker threads, and no
    thread may index a partly filled table).
    """
    global _shipped
    if _shipped is None:
        _shipped = _shipped_data() or b""
    if _shipped:
        return _preimage(int.from_bytes(_shipped[prefix * 3 : prefix * 3 + 3], "big"))
    if len(_prefix_table) != 1 << _PREFIX_BITS:
        with _prefix_lock:
            if len(_prefix_table) != 1 << _PREFIX_BITS:
                _prefix_table[:] = [_preimage(c) for c in compute_preimage_counters()]
    return _prefix_table[prefix]


def refresh_key(local_key: int, cpl: int, rng: random.Random) -> bytes:
    """A lookup key whose kad key shares exactly ``cpl`` (<= 15) leading bits with ``local_key``."""
    if not 0 <= cpl < _PREFIX_BITS:
        raise ValueError(f"refresh keys exist for buckets 0..{_PREFIX_BITS - 1}")
    top = local_key >> (KEY_BITS - _PREFIX_BITS)
    flip = 1 << (_PREFIX_BITS - 1 - cpl)
    keep_mask = ((1 << _PREFIX_BITS) - 1) ^ (flip * 2 - 1)  # bits above the flipped one
    low = rng.getrandbits(_PREFIX_BITS - 1 - cpl) if cpl < _PREFIX_BITS - 1 else 0
    prefix = (top & keep_mask) | ((top & flip) ^ flip) | low
    return _preimage_for(prefix)


# --- the table ---


class AddStatus(Enum):
    ADDED = "added"
    UPDATED = "updated"  # already present; marked seen
    PING_NEEDED = "ping-needed"  # bucket full: ping AddResult.ping, then call ping_result
    BUCKET_FULL = "bucket-full"  # full and its oldest peer is fresh or already being checked
    REJECTED_SELF = "rejected-self"
    REJECTED_CLIENT = "rejected-client"
    REJECTED_DIVERSITY = "rejected-diversity"


@dataclass(frozen=True, slots=True)
class AddResult:
    status: AddStatus
    ping: bytes | None = None  # the old peer to ping when status is PING_NEEDED


@dataclass(slots=True)
class PeerEntry:
    peer_id: bytes
    key: int
    addrs: tuple[bytes, ...]
    groups: frozenset[IpGroup]
    added_at: float
    last_seen: float
    info: Peer = field(init=False)

    def __post_init__(self) -> None:
        self.info = Peer(self.peer_id, self.addrs)


@dataclass(slots=True)
class _Pending:
    old: bytes
    candidate: bytes
    candidate_key: int
    addrs: tuple[bytes, ...]
    since: float


class RoutingTable:
    """256 k-buckets of DHT-server peers, least recently seen first within a bucket."""

    def __init__(
        self,
        local_id: bytes,
        *,
        k: int = KAD_K,
        diversity: DiversityConfig | None = None,
        liveness_grace: float = KAD_LIVENESS_GRACE,
        ping_timeout: float = 2 * KAD_RPC_TIMEOUT,
        now: float = 0.0,
        local_key: int | None = None,
    ) -> None:
        self.local_id = local_id
        self.local_key = kad_key(local_id) if local_key is None else local_key
        self.k = k
        self.diversity = diversity if diversity is not None else DiversityConfig()
        self.liveness_grace = liveness_grace
        self.ping_timeout = ping_timeout
        self._buckets: dict[int, OrderedDict[bytes, PeerEntry]] = {}  # only non-empty ones
        self._index: dict[bytes, int] = {}  # peer id -> bucket
        self._pending: dict[int, _Pending] = {}  # bucket -> liveness check in progress
        self._table_groups: dict[IpGroup, int] = {}
        self._bucket_groups: dict[int, dict[IpGroup, int]] = {}
        self._last_refresh = [now] * KEY_BITS
        self._top = -1  # last non-empty bucket

    # -- queries --

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._index

    def get(self, peer_id: bytes) -> PeerEntry | None:
        idx = self._index.get(peer_id)
        return None if idx is None else self._buckets[idx][peer_id]

    def peers(self) -> Iterator[PeerEntry]:
        for i in sorted(self._buckets):
            yield from self._buckets[i].values()

    def bucket_index(self, key: int) -> int:
        return min(common_prefix_len(self.local_key, key), KEY_BITS - 1)

    def bucket(self, index: int) -> list[PeerEntry]:
        """Peers of one bucket, least recently seen first."""
        bucket = self._buckets.get(index)
        return list(bucket.values()) if bucket else []

    def bucket_sizes(self) -> dict[int, int]:
        return {i: len(b) for i, b in sorted(self._buckets.items())}

    def last_nonempty_bucket(self) -> int:
        return self._top

    def closest(self, target: int, n: int, exclude: Iterable[bytes] = ()) -> list[PeerEntry]:
        """The ``n`` peers closest to kad key ``target``, nearest first, skipping ``exclude``.

        Bucket ``c`` = cpl(local, target) holds the nearest peers, then all deeper buckets (they
        share exactly ``c`` bits with the target), then buckets ``c-1 .. 0`` one by one.
        """
        skip = set(exclude)
        want = n + len(skip)  # excluded peers are filtered out once at the end
        c = common_prefix_len(self.local_key, target)
        out: list[PeerEntry] = []

        def by_distance(e: PeerEntry) -> int:
            return e.key ^ target

        buckets = self._buckets
        if c < KEY_BITS:
            if c in buckets:
                out.extend(sorted(buckets[c].values(), key=by_distance))
            if len(out) < want:
                deeper: list[PeerEntry] = []
                for i in range(c + 1, self._top + 1):
                    if i in buckets:
                        deeper.extend(buckets[i].values())
                deeper.sort(key=by_distance)
                out.extend(deeper)
        for i in range(min(c, KEY_BITS) - 1, -1, -1):
            if len(out) >= want:
                break
            if i in buckets:
                out.extend(sorted(buckets[i].values(), key=by_distance))
        if skip:
            out = [e for e in out if e.peer_id not in skip]
        return out[:n]

    # -- updates --

    def try_add(
        self,
        peer_id: bytes,
        addrs: Iterable[bytes],
        now: float,
        *,
        server: bool = True,
        key: int | None = None,
    ) -> AddResult:
        """Offer a peer we heard from (``server``: it speaks the DHT protocol as a server)."""
        if peer_id == self.local_id:
            return AddResult(AddStatus.REJECTED_SELF)
        if not server:
            self.remove(peer_id)
            return AddResult(AddStatus.REJECTED_CLIENT)
        addrs = tuple(addrs)
        idx = self._index.get(peer_id)
        if idx is not None:
            self._touch(idx, peer_id, addrs, now)
            return AddResult(AddStatus.UPDATED)
        if key is None:
            key = kad_key(peer_id)
        idx = self.bucket_index(key)
        bucket = self._buckets.get(idx)
        if bucket is not None and len(bucket) >= self.k:
            oldest = next(iter(bucket.values()))
            if now - oldest.last_seen <= self.liveness_grace:
                return AddResult(AddStatus.BUCKET_FULL)
            pending = self._pending.get(idx)
            if pending is not None and now - pending.since < self.ping_timeout:
                return AddResult(AddStatus.BUCKET_FULL)
            if not self._diversity_ok(idx, _ip_groups(addrs, self.diversity)):
                return AddResult(AddStatus.REJECTED_DIVERSITY)
            self._pending[idx] = _Pending(oldest.peer_id, peer_id, key, addrs, now)
            return AddResult(AddStatus.PING_NEEDED, ping=oldest.peer_id)
        groups = _ip_groups(addrs, self.diversity)
        if not self._diversity_ok(idx, groups):
            return AddResult(AddStatus.REJECTED_DIVERSITY)
        self._insert(idx, peer_id, key, addrs, groups, now)
        return AddResult(AddStatus.ADDED)

    def ping_result(self, peer_id: bytes, alive: bool, now: float) -> AddStatus | None:
        """Report the liveness check ``try_add`` asked for; returns what became of the newcomer."""
        idx = self._index.get(peer_id)
        pending: _Pending | None = None
        for b, p in self._pending.items():
            if p.old == peer_id:
                pending = self._pending.pop(b)
                break
        if alive and idx is not None:
            self._touch(idx, peer_id, None, now)
        elif not alive:
            self.remove(peer_id)
        if pending is None:
            return None
        if alive and idx is not None:
            return AddStatus.BUCKET_FULL
        status = self.try_add(pending.candidate, pending.addrs, now, key=pending.candidate_key)
        return status.status

    def seen(self, peer_id: bytes, now: float) -> bool:
        """Mark a peer as just heard from; False if it is not in the table."""
        idx = self._index.get(peer_id)
        if idx is None:
            return False
        self._touch(idx, peer_id, None, now)
        return True

    def remove(self, peer_id: bytes) -> bool:
        idx = self._index.pop(peer_id, None)
        if idx is None:
            return False
        bucket = self._buckets[idx]
        entry = bucket.pop(peer_id)
        self._count(idx, entry.groups, -1)
        if not bucket:
            del self._buckets[idx]
            if idx == self._top:
                self._top = max(self._buckets, default=-1)
        return True

    # -- refresh scheduling --

    def mark_refreshed(self, target: int, now: float) -> None:
        """Record that a lookup for kad key ``target`` completed (refreshes its bucket)."""
        self._last_refresh[self.bucket_index(target)] = now

    def due_refreshes(
        self, now: float, interval: float = KAD_REFRESH_INTERVAL, *, force: bool = False
    ) -> list[int]:
        """Buckets (up to the last non-empty one, at most KAD_MAX_REFRESH_CPL) to refresh now."""
        top = min(self.last_nonempty_bucket(), KAD_MAX_REFRESH_CPL)
        return [i for i in range(top + 1) if force or now - self._last_refresh[i] >= interval]

    def refresh_key(self, bucket: int, rng: random.Random) -> bytes:
        """A FIND_NODE key that falls in ``bucket`` (0..15)."""
        return refresh_key(self.local_key, bucket, rng)

    def stale_peers(self, now: float, max_age: float) -> list[bytes]:
        """Peers not heard from for ``max_age`` seconds: ping them, ``remove`` the silent ones."""
        return [e.peer_id for e in self.peers() if now - e.last_seen >= max_age]

    # -- internals --

    def _diversity_ok(
        self, idx: int, groups: frozenset[IpGroup], skip: PeerEntry | None = None
    ) -> bool:
        cfg = self.diversity
        for g in groups:
            own = 1 if skip is not None and g in skip.groups else 0
            if self._table_groups.get(g, 0) - own >= cfg.per_table:
                return False
            if self._bucket_groups.get(idx, {}).get(g, 0) - own >= cfg.per_bucket:
                return False
        return True

    def _count(self, idx: int, groups: frozenset[IpGroup], delta: int) -> None:
        if not groups:
            return
        for counts in (self._table_groups, self._bucket_groups.setdefault(idx, {})):
            for g in groups:
                n = counts.get(g, 0) + delta
                if n:
                    counts[g] = n
                else:
                    counts.pop(g, None)
        if not self._bucket_groups[idx]:
            del self._bucket_groups[idx]

    def _insert(
        self,
        idx: int,
        peer_id: bytes,
        key: int,
        addrs: tuple[bytes, ...],
        groups: frozenset[IpGroup],
        now: float,
    ) -> None:
        self._buckets.setdefault(idx, OrderedDict())[peer_id] = PeerEntry(
            peer_id, key, addrs, groups, now, now
        )
        self._index[peer_id] = idx
        self._count(idx, groups, 1)
        self._top = max(self._top, idx)

    def _touch(self, idx: int, peer_id: bytes, addrs: tuple[bytes, ...] | None, now: float) -> None:
        bucket = self._buckets[idx]
        entry = bucket[peer_id]
        entry.last_seen = now
        bucket.move_to_end(peer_id)
        if addrs and addrs != entry.addrs:
            groups = _ip_groups(addrs, self.diversity)
            if self._diversity_ok(idx, groups, skip=entry):
                self._count(idx, entry.groups, -1)
                self._count(idx, groups, 1)
                new = PeerEntry(peer_id, entry.key, addrs, groups, entry.added_at, now)
                bucket[peer_id] = new
