"""Iterative Kademlia lookup as a sans-io state machine.

Driving it::

    lk = Lookup(MessageType.GET_PROVIDERS, key, seeds, local_id=me, now=t)
    for peer in lk.step(now):            # send lk.request to each of these
        ...
    lk.on_response(peer_id, msg, now)    # or lk.on_failure(peer_id, now)
    lk.step(now)                         # again after every event and at lk.next_deadline()

Candidates are kept sorted by XOR distance to the target. At most ``alpha`` requests are in flight
per path; a request unanswered ``timeout`` seconds after it was sent counts as failed. A path is
finished when the ``k`` closest candidates that have not failed have all answered (or none are
left). GET_PROVIDERS stops early once ``want_providers`` providers are known; GET_VALUE once
``quorum`` valid records are in.

Disjoint paths (S/Kademlia): with ``disjoint_paths = d`` the seeds are dealt round-robin to ``d``
paths, peers learned from a response belong to the responder's path, and no peer is queried by
two paths; the lookup ends when every path has finished.

Hops: a seed is at hop 1; a peer first learned from a peer at hop ``h`` is at hop ``h + 1``.
``LookupStats.hops`` is the hop of the response that satisfied the lookup: the first response
carrying a provider (GET_PROVIDERS) or a valid record (GET_VALUE), or, for FIND_NODE, the hop
of the closest peer that answered. It is the length of the chain of requests that found it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from ...limits import KAD_ALPHA, KAD_K, KAD_LOOKUP_MAX_PEERS, KAD_RPC_TIMEOUT
from .messages import Message, MessageType, Peer, Record
from .routing import kad_key

RecordCheck = Callable[[bytes, bytes], bool]

_KINDS = (MessageType.FIND_NODE, MessageType.GET_PROVIDERS, MessageType.GET_VALUE)


class QueryState(IntEnum):
    WAITING = 0
    IN_FLIGHT = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass(slots=True)
class _Candidate:
    peer: Peer
    dist: int
    hop: int
    path: int
    state: QueryState = QueryState.WAITING
    deadline: float = 0.0


@dataclass(slots=True)
class _Path:
    order: list[int] = field(default_factory=list)  # sorted distances
    in_flight: int = 0
    done: bool = False


@dataclass(slots=True)
class LookupStats:
    queries: int = 0  # requests sent
    responses: int = 0
    failures: int = 0  # errors and timeouts
    timeouts: int = 0
    hops: int = 0  # see module docstring; 0 when nothing satisfied the lookup
    started: float = 0.0
    finished: float | None = None


@dataclass(slots=True)
class LookupResult:
    closest: list[Peer]  # up to k closest peers that answered, nearest first
    providers: list[Peer]
    records: list[tuple[bytes, Record]]  # (peer id, record) for valid records
    stats: LookupStats


class Lookup:
    """One FIND_NODE, GET_PROVIDERS or GET_VALUE lookup."""

    def __init__(
        self,
        kind: MessageType,
        key: bytes,
        seeds: Iterable[Peer],
        *,
        local_id: bytes,
        now: float,
        k: int = KAD_K,
        alpha: int = KAD_ALPHA,
        timeout: float = KAD_RPC_TIMEOUT,
        want_providers: int = KAD_K,
        quorum: int = 0,
        disjoint_paths: int = 1,
        record_check: RecordCheck | None = None,
        key_fn: Callable[[bytes], int] = kad_key,
        max_peers: int = KAD_LOOKUP_MAX_PEERS,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"cannot look up with {kind.name}")
        if k < 1 or alpha < 1 or disjoint_paths < 1:
            raise ValueError("k, alpha and disjoint_paths must be positive")
        self.kind = kind
        self.key = key
        self.target = key_fn(key)
        self.local_id = local_id
        self.k = k
        self.alpha = alpha
        self.timeout = timeout
        self.want_providers = want_providers
        self.quorum = quorum
        self.record_check = record_check
        self.key_fn = key_fn
        self.max_peers = max_peers
        self.request = Message(kind, key)
        self.stats = LookupStats(started=now)
        self._paths = [_Path() for _ in range(disjoint_paths)]
        self._by_dist: dict[int, _Candidate] = {}
        self._by_id: dict[bytes, _Candidate] = {}
        self._inflight: dict[bytes, _Candidate] = {}
        self._providers: dict[bytes, Peer] = {}
        self._records: list[tuple[bytes, Record]] = []
        self._satisfied = False
        ordered = sorted(
            (p for p in seeds if p.id != local_id), key=lambda p: key_fn(p.id) ^ self.target
        )
        for i, peer in enumerate(ordered):
            self._add(peer, hop=1, path=i % disjoint_paths)

    # -- driving --

    @property
    def done(self) -> bool:
        return self.stats.finished is not None

    def expire(self, now: float) -> list[bytes]:
        """Fail the requests whose deadline has passed; returns those peers (``step`` does this too)."""
        overdue = [c for c in self._inflight.values() if c.deadline <= now]
        for cand in overdue:
            self.stats.timeouts += 1
            self._fail(cand)
        return [c.peer.id for c in overdue]

    def step(self, now: float) -> list[Peer]:
        """Expire overdue requests, then return the peers to send ``request`` to now."""
        if self.done:
            return []
        self.expire(now)
        out: list[Peer] = []
        if not self._satisfied:
            for path in self._paths:
                # re-evaluated every time: a late answer may reopen a finished path
                out.extend(self._advance(path, now))
        if self._satisfied or all(p.done for p in self._paths):
            self.stats.finished = now
            return []
        return out

    def on_response(self, peer_id: bytes, msg: Message, now: float) -> bool:
        """Feed an answer; False (and ignored) if we were not waiting for one from this peer."""
        cand = self._by_id.get(peer_id)
        if cand is None or cand.state != QueryState.IN_FLIGHT or self.done:
            return False
        if msg.type != self.kind:
            self._fail(cand)
            return False
        cand.state = QueryState.SUCCEEDED
        del self._inflight[peer_id]
        self._paths[cand.path].in_flight -= 1
        self.stats.responses += 1
        for peer in msg.closer_peers:
            if peer.id != self.local_id and peer.id not in self._by_id:
                self._add(peer, hop=cand.hop + 1, path=cand.path)
        if self.kind == MessageType.GET_PROVIDERS and msg.key in (self.key, b""):
            for peer in msg.provider_peers:
                if not self._providers and not self.stats.hops:
                    self.stats.hops = cand.hop
                self._providers.setdefault(peer.id, peer)
            if len(self._providers) >= self.want_providers:
                self._satisfied = True
        elif self.kind == MessageType.GET_VALUE and msg.record is not None:
            rec = msg.record
            if rec.key == self.key and (
                self.record_check is None or self.record_check(rec.key, rec.value)
            ):
                if not self._records:
                    self.stats.hops = cand.hop
                self._records.append((peer_id, rec))
                if self.quorum and len(self._records) >= self.quorum:
                    self._satisfied = True
        return True

    def on_failure(self, peer_id: bytes, now: float) -> bool:
        """The request to ``peer_id`` failed (error, reset, unreachable)."""
        cand = self._by_id.get(peer_id)
        if cand is None or cand.state != QueryState.IN_FLIGHT:
            return False
        self._fail(cand)
        return True

    def next_deadline(self) -> float | None:
        """When ``step`` must next be called if nothing else happens (None: nothing pending)."""
        return min((c.deadline for c in self._inflight.values()), default=None)

    def in_flight(self) -> list[bytes]:
        return list(self._inflight)

    def state_of(self, peer_id: bytes) -> QueryState | None:
        cand = self._by_id.get(peer_id)
        return None if cand is None else cand.state

    def result(self) -> LookupResult:
        closest: list[Peer] = []
        for dist in sorted(self._by_dist):
            cand = self._by_dist[dist]
            if cand.state == QueryState.SUCCEEDED:
                closest.append(cand.peer)
                if len(closest) >= self.k:
                    break
        if self.kind == MessageType.FIND_NODE and closest:
            self.stats.hops = self._by_id[closest[0].id].hop
        return LookupResult(
            closest, list(self._providers.values()), list(self._records), self.stats
        )

    # -- internals --

    def _add(self, peer: Peer, hop: int, path: int) -> None:
        dist = self.key_fn(peer.id) ^ self.target
        order = self._paths[path].order
        if len(self._by_id) >= self.max_peers and (not order or dist > order[-1]):
            return
        cand = _Candidate(peer, dist, hop, path)
        self._by_dist[dist] = cand
        self._by_id[peer.id] = cand
        bisect.insort(order, dist)
        if len(self._by_id) > self.max_peers:
            # forget the farthest never-queried peer of this path
            for i in range(len(order) - 1, -1, -1):
                far = self._by_dist[order[i]]
                if far.state == QueryState.WAITING:
                    del order[i], self._by_dist[far.dist], self._by_id[far.peer.id]
                    break

    def _fail(self, cand: _Candidate) -> None:
        if cand.state == QueryState.IN_FLIGHT:
            self._paths[cand.path].in_flight -= 1
            del self._inflight[cand.peer.id]
        cand.state = QueryState.FAILED
        self.stats.failures += 1

    def _advance(self, path: _Path, now: float) -> list[Peer]:
        """Query the nearest waiting peers among the k nearest live ones; detect the end."""
        out: list[Peer] = []
        live = 0
        unfinished = False
        for dist in path.order:
            cand = self._by_dist[dist]
            state = cand.state
            if state == QueryState.FAILED:
                continue
            live += 1
            if state == QueryState.WAITING:
                unfinished = True
                if path.in_flight < self.alpha:
                    cand.state = QueryState.IN_FLIGHT
                    cand.deadline = now + self.timeout
                    path.in_flight += 1
                    self._inflight[cand.peer.id] = cand
                    self.stats.queries += 1
                    out.append(cand.peer)
            elif state == QueryState.IN_FLIGHT:
                unfinished = True
            if live >= self.k or (unfinished and path.in_flight >= self.alpha):
                break
        # done when the k nearest live peers have answered (requests still out to farther
        # peers are ignored)
        path.done = not unfinished
        return out
