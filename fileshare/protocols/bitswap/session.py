"""Sans-io fetch scheduler for one DAG root over many bitswap peers.

Inputs: ``add_peer``/``remove_peer``, ``on_message``, ``local_result`` and the time. ``poll(now)``
returns ``SendWants`` (a wantlist for a peer), ``StoreBlock`` (a verified block to persist),
``CheckLocal`` (CIDs to look up locally: resume) and ``PeerDropped``. Call ``poll`` after every
input and at ``next_deadline()``.

Blocks are requested breadth-first (children are found by decoding each verified block), each
from one peer: the one expected to deliver it first. A peer's window of blocks in flight holds
``queue_target`` seconds of its measured throughput, capped by an AIMD limit (reset on a timeout,
+1 per block). End game: when nothing is left to assign, an idle peer may get a copy of a block
outstanding elsewhere if it should deliver it much sooner.

A payload's CID is recomputed by hashing its data under its prefix and must match (by multihash)
a CID we want; anything else counts against the sender, dropped after ``max_bad_blocks``. Peers
not known to have the content get want-have probes until they answer HAVE. A peer silent for
``idle_timeout`` with wants outstanding gets a strike (its wants go elsewhere); after
``max_strikes`` in a row it is dropped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from itertools import islice
from typing import Generic, TypeVar

from ... import limits
from ...content.cid import CID, RAW
from ...content.reader import Node, decode_block
from ...errors import DecodeError, FileshareError
from .messages import INT32_MAX, BlockPresence, Message, PresenceType, WantEntry, WantType
from .session_types import (
    Action,
    CheckLocal,
    PeerDropped,
    PeerStats,
    Progress,
    SendWants,
    SessionConfig,
    StoreBlock,
)

P = TypeVar("P", bound=Hashable)

__all__ = ["Session"]

_SCAN_LIMIT = 256  # pending entries looked at per poll when the head cannot be assigned
_RATE_ALPHA = 0.4  # weight of a new throughput sample
_COUNTERS = ("blocks_done", "bytes_done", "blocks_local", "bytes_local", "file_bytes_done",
             "duplicate_blocks", "duplicate_bytes", "endgame_duplicate_bytes", "bad_blocks")  # fmt: skip


# block states
_UNCHECKED, _CHECKING, _PENDING, _OUTSTANDING, _STALLED = range(5)


@dataclass(slots=True, eq=False)
class _Block:
    cid: CID
    depth: int
    size_hint: int | None
    state: int = _UNCHECKED
    holders: list[Hashable] = field(default_factory=list)
    priority: int = 0
    offsets: list[int] | None = None  # file_parts: where its content goes in the file
    expect: int | None = None  # file_parts: content bytes its parent says it holds


@dataclass(slots=True, eq=False)
class _Peer(Generic[P]):
    key: P
    supports_have: bool
    cap: int  # AIMD limit on the window (blocks)
    quiet_since: float  # last time we heard from it, or started waiting on it
    next_probe: float
    active: bool = False  # known to have the content
    out: dict[bytes, tuple[float, int]] = field(default_factory=dict)  # mh -> (sent, est. size)
    out_bytes: int = 0
    probes: set[bytes] = field(default_factory=set)
    dont_have: set[bytes] = field(default_factory=set)
    outbox: list[WantEntry] = field(default_factory=list)
    rate: float | None = None
    latency: float | None = None
    acc_bytes: int = 0
    acc_time: float = 0.0
    mark: float | None = None  # start of the current busy stretch
    strikes: int = 0
    bad: int = 0
    blocks: int = 0
    bytes: int = 0
    dup_bytes: int = 0


class Session(Generic[P]):
    """Fetches the DAG under ``root``; see the module docstring for the protocol."""

    def __init__(
        self, root: CID, *, config: SessionConfig | None = None, file_parts: bool = False
    ) -> None:
        self.root = root
        self.config = config or SessionConfig()
        # file_parts: ``StoreBlock.parts`` place each fetched block's file bytes; ``parts_complete``
        # says whether the parts of this session cover the whole file (see the property)
        self.file_parts = file_parts
        self._parts_ok = file_parts
        self.parts_bytes = 0
        self.error: FileshareError | None = None
        self._blocks: dict[bytes, _Block] = {}
        self._done: set[bytes] = set()
        self._copied: set[bytes] = set()
        self._pending: deque[bytes] = deque()
        self._stalled: list[bytes] = []
        self._unchecked: list[bytes] = []
        self._peers: dict[P, _Peer[P]] = {}
        self._banned: set[P] = set()
        self._actions: list[Action[P]] = []
        self._priority = INT32_MAX
        self._avg_block: float | None = None
        self._prior_rate = math.inf  # bytes/s assumed for a peer not yet measured (mean of others)
        self._finished = False
        self._c = dict.fromkeys(_COUNTERS, 0)
        self.file_size: int | None = None
        self._discover(root, 0, None, 0 if file_parts else None)

    # --- peers ---
    def add_peer(
        self, peer: P, now: float, *, has_blocks: bool = False, supports_have: bool = True
    ) -> None:
        """A peer to fetch from: ``has_blocks`` if it is a known provider (else it is probed)."""
        if peer in self._banned:
            return
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer, supports_have, self._max_window(), now, now)
        if has_blocks or not supports_have:
            self._activate(p)

    def remove_peer(self, peer: P, now: float) -> None:
        """The peer went away: its outstanding wants go back to the front of the queue."""
        p = self._peers.pop(peer, None)
        if p is not None:
            self._requeue(p, list(p.out), now, cancel=False)

    # --- inputs ---
    def local_result(self, cid: CID, present: bool, data: bytes | None = None) -> None:
        """Answer a ``CheckLocal``. A present non-raw block needs its ``data`` (for its links)."""
        block = self._blocks.get(cid.multihash)
        if block is None or block.state != _CHECKING:
            return
        if present and (block.cid.codec == RAW or (data is not None and block.cid.matches(data))):
            self._complete(block, data, None)
        else:
            block.state = _PENDING
            self._pending.append(cid.multihash)

    def on_message(self, peer: P, message: Message, now: float) -> None:
        """Handle a received message: presences, then blocks (hashed here to find their CIDs)."""
        p = self._peers.get(peer)
        if p is None or self.error is not None:
            return
        p.quiet_since = now
        for presence in message.presences:
            self._on_presence(p, presence, now)
        for payload in message.all_payloads():
            if peer not in self._peers:
                return  # dropped for bad blocks
            if len(payload.data) > limits.MAX_BLOCK_SIZE:
                self._bad(p, now)
                continue
            try:
                cid = payload.cid()
            except DecodeError:
                self._bad(p, now)
                continue
            self.on_verified_block(peer, cid, payload.data, now)

    def on_verified_block(self, peer: P, cid: CID, data: bytes | memoryview, now: float) -> None:
        """A block whose ``cid`` was computed by hashing ``data`` (e.g. ``Payload.cid()``)."""
        p = self._peers.get(peer)
        if p is None or self.error is not None:
            return
        p.quiet_since = now
        mh = cid.multihash
        block = self._blocks.get(mh)
        if block is None or len(data) > limits.MAX_BLOCK_SIZE:
            if mh in self._done and len(data) <= limits.MAX_BLOCK_SIZE:
                self._forget(p, mh, now)
                p.dup_bytes += len(data)
                self._c["duplicate_blocks"] += 1
                self._c["endgame_duplicate_bytes" if mh in self._copied else "duplicate_bytes"] += (
                    len(data)
                )
            else:
                self._bad(p, now)
            return
        self._delivered(p, mh, len(data), now)
        self._activate(p)
        p.strikes = 0
        p.cap = min(self._max_window(), p.cap + 1)
        p.blocks += 1
        p.bytes += len(data)
        for other in self._peers.values():
            if other is not p and (mh in other.out or mh in other.probes):
                self._forget(other, mh, now)
                other.probes.discard(mh)
                other.outbox.append(WantEntry(block.cid, cancel=True))
        n = len(data)
        self._avg_block = n if self._avg_block is None else 0.9 * self._avg_block + 0.1 * n
        self._complete(block, data, p)

    def report_bad(self, peer: P, now: float) -> None:
        """Count a protocol violation (e.g. an undecodable message) against ``peer``."""
        p = self._peers.get(peer)
        if p is not None:
            self._bad(p, now)

    # --- outputs ---
    def poll(self, now: float) -> list[Action[P]]:
        """Everything to do now, in order; call after each input and at ``next_deadline()``."""
        if self.error is None and not self.done:
            rates = [q.rate for q in self._peers.values() if q.rate]
            self._prior_rate = sum(rates) / len(rates) if rates else math.inf
            self._timeouts(now)
            self._probe(now)
            if self._unchecked:
                cids = []
                for mh in self._unchecked:
                    block = self._blocks.get(mh)
                    if block is not None and block.state == _UNCHECKED:
                        block.state = _CHECKING
                        cids.append(block.cid)
                self._unchecked = []
                if cids:
                    self._actions.append(CheckLocal(tuple(cids)))
            self._assign(now)
            self._endgame(now)
        elif not self._finished:
            self._finished = True
            for p in self._peers.values():  # withdraw whatever is still asked for
                for mh in [*p.out, *p.probes]:
                    block = self._blocks.get(mh)
                    if block is not None:
                        p.outbox.append(WantEntry(block.cid, cancel=True))
                p.out.clear()
                p.probes.clear()
        actions, self._actions = self._actions, []
        for p in self._peers.values():
            self._flush(p, actions)
        return actions

    def next_deadline(self) -> float | None:
        """When ``poll`` must be called next if nothing arrives (None: only on input)."""
        if self.done or self.error is not None:
            return None
        times = [p.quiet_since + self._idle_limit(p) for p in self._peers.values() if p.out]
        if self._probe_targets():
            times += [p.next_probe for p in self._peers.values() if self._probeable(p)]
        return min(times) if times else None

    @property
    def done(self) -> bool:
        return self.error is None and not self._blocks and self.root.multihash in self._done

    @property
    def needs_peers(self) -> bool:
        """Blocks remain that no current peer will serve: find more providers."""
        idle = bool(self._stalled) or not any(p.active for p in self._peers.values())
        return idle and not self.done and self.error is None

    def progress(self) -> Progress:
        return Progress(
            **self._c,
            blocks_known=len(self._done) + len(self._blocks),
            file_size=self.file_size,
            in_flight=sum(len(p.out) for p in self._peers.values()),
            peers_active=sum(1 for p in self._peers.values() if p.active),
        )

    def peer_stats(self) -> dict[P, PeerStats]:
        return {
            k: PeerStats(p.active, p.blocks, p.bytes, p.dup_bytes, p.bad, p.strikes, p.rate,
                         self._window(p), len(p.out))
            for k, p in self._peers.items()
        }  # fmt: skip

    # --- DAG bookkeeping ---
    def _discover(
        self, cid: CID, depth: int, size_hint: int | None, offset: int | None = None
    ) -> None:
        mh = cid.multihash
        if mh in self._done or mh in self._blocks:
            known = self._blocks.get(mh)
            if offset is not None and known is not None and known.offsets is not None:
                known.offsets.append(offset)  # the same block at another place in the file
            elif offset is not None:
                self._parts_ok = False  # its bytes went by already: the file is not covered
            return
        if depth > self.config.max_depth:
            self.error = DecodeError(
                f"DAG under {self.root} is deeper than {self.config.max_depth}"
            )
            return
        block = self._blocks[mh] = _Block(cid, depth, size_hint)
        if offset is not None:
            block.offsets = [offset]
        if self.config.check_local:
            self._unchecked.append(mh)
        else:
            block.state = _PENDING
            self._pending.append(mh)

    def _complete(
        self, block: _Block, data: bytes | memoryview | None, peer: _Peer[P] | None
    ) -> None:
        mh = block.cid.multihash
        del self._blocks[mh]
        self._done.add(mh)
        size = len(data) if data is not None else (block.size_hint or 0)
        self._c["blocks_done"] += 1
        self._c["bytes_done"] += size
        if peer is None:
            self._c["blocks_local"] += 1
            self._c["bytes_local"] += size
        node = None
        if block.cid.codec != RAW and data is not None:
            try:
                node = decode_block(block.cid, bytes(data))
            except DecodeError as exc:
                self.error = exc
                return
        parts: tuple[tuple[int, bytes | memoryview], ...] = ()
        if block.offsets is not None:
            parts = self._parts(block, data, node, peer is not None)
        if peer is not None and data is not None:
            self._actions.append(StoreBlock(block.cid, data, parts))
        if node is None:
            self._c["file_bytes_done"] += size if block.cid.codec == RAW else 0
            return
        if block.depth == 0 and node.kind == "file":
            self.file_size = node.filesize
        self._c["file_bytes_done"] += len(node.data) if node.kind == "file" else 0
        base = len(node.data)
        for i, link in enumerate(node.links):
            # a raw leaf's size is its blocksize; a dag-pb link's Tsize covers its whole subtree
            raw = link.hash.codec == RAW and node.kind == "file" and i < len(node.blocksizes)
            offset = None
            if block.offsets is not None and self._parts_ok and len(block.offsets) == 1:
                offset = block.offsets[0] + base
            elif block.offsets is not None:
                self._parts_ok = False  # a subtree used twice: export from the store instead
            self._discover(link.hash, block.depth + 1, node.blocksizes[i] if raw else None, offset)
            child = self._blocks.get(link.hash.multihash)
            if offset is not None and child is not None and child.offsets is not None:
                expect = node.blocksizes[i]
                if child.expect not in (None, expect):
                    self._parts_ok = False
                child.expect = expect
            if i < len(node.blocksizes):
                base += node.blocksizes[i]

    def _parts(
        self, block: _Block, data: bytes | memoryview | None, node: Node | None, fetched: bool
    ) -> tuple[tuple[int, bytes | memoryview], ...]:
        """Where ``block``'s file bytes go; clears ``_parts_ok`` if it does not fit the file."""
        assert block.offsets is not None
        if node is None:
            content, size = data, (len(data) if data is not None else block.size_hint)
        elif node.kind == "file":
            content, size = node.data, node.filesize
        else:
            self._parts_ok = False  # not a file: nothing to place
            return ()
        if block.expect is not None and size != block.expect:
            self._parts_ok = False  # the export reports the inconsistent DAG
            return ()
        if not content:
            return ()
        if not fetched:
            self._parts_ok = False  # found locally: its bytes are not handed out here
            return ()
        self.parts_bytes += len(content) * len(block.offsets)
        return tuple((off, content) for off in block.offsets)

    @property
    def parts_complete(self) -> bool:
        """``file_parts`` and done, and the parts handed out cover the whole file exactly once."""
        if not (self._parts_ok and self.done):
            return False
        return self.file_size is None or self.parts_bytes == self.file_size

    def _has_pending(self) -> bool:
        while self._pending:
            block = self._blocks.get(self._pending[0])
            if block is not None and block.state == _PENDING:
                return True
            self._pending.popleft()
        return False

    def _requeue(self, p: _Peer[P], mhs: list[bytes], now: float, *, cancel: bool) -> None:
        """Take ``mhs`` away from ``p``; those no one else holds go to the front of the queue."""
        for mh in reversed(mhs):
            self._forget(p, mh, now)
            block = self._blocks.get(mh)
            if block is None:
                continue
            if cancel:
                p.outbox.append(WantEntry(block.cid, cancel=True))
            if p.key in block.holders:
                block.holders.remove(p.key)
            if not block.holders and block.state == _OUTSTANDING:
                block.state = _PENDING
                self._pending.appendleft(mh)

    # --- peer bookkeeping ---
    def _activate(self, p: _Peer[P]) -> None:
        if not p.active:
            p.active = True
            for mh in reversed(self._stalled):  # someone new might have them
                block = self._blocks.get(mh)
                if block is not None and block.state == _STALLED:
                    block.state = _PENDING
                    self._pending.appendleft(mh)
            self._stalled = []

    def _delivered(self, p: _Peer[P], mh: bytes, n: int, now: float) -> None:
        """Throughput accounting for a block ``p`` delivered."""
        sent = p.out.get(mh)
        if sent is None:
            return
        lat = now - sent[0]
        p.latency = lat if p.latency is None else min(p.latency, lat)
        p.acc_bytes += n
        self._forget(p, mh, now)
        if p.acc_time >= self.config.rate_interval and p.acc_bytes:
            sample = p.acc_bytes / p.acc_time
            p.rate = sample if p.rate is None else p.rate + _RATE_ALPHA * (sample - p.rate)
            p.acc_bytes = 0
            p.acc_time = 0.0

    def _forget(self, p: _Peer[P], mh: bytes, now: float) -> None:
        """``mh`` is no longer outstanding at ``p`` (busy time is accounted up to ``now``)."""
        sent = p.out.pop(mh, None)
        if sent is None:
            return
        p.out_bytes -= sent[1]
        if p.mark is not None:
            p.acc_time += now - p.mark
        p.mark = now if p.out else None
        block = self._blocks.get(mh)
        if block is not None and p.key in block.holders:
            block.holders.remove(p.key)

    def _on_presence(self, p: _Peer[P], presence: BlockPresence, now: float) -> None:
        mh = presence.cid.multihash
        block = self._blocks.get(mh)
        if presence.type == PresenceType.HAVE:
            p.probes.discard(mh)
            self._activate(p)
            return
        if block is None:
            return
        p.dont_have.add(mh)
        if mh in p.probes:
            p.probes.discard(mh)
            p.outbox.append(WantEntry(block.cid, cancel=True))  # the server parks it otherwise
        if mh in p.out:
            self._requeue(p, [mh], now, cancel=True)

    def _bad(self, p: _Peer[P], now: float) -> None:
        p.bad += 1
        self._c["bad_blocks"] += 1
        if p.bad >= self.config.max_bad_blocks:
            self._drop(p, f"sent {p.bad} bad blocks", now)
        elif p.out:
            # servers answer in priority order: the oldest want is most likely the spoiled one
            self._requeue(p, [next(iter(p.out))], now, cancel=True)

    def _drop(self, p: _Peer[P], reason: str, now: float) -> None:
        del self._peers[p.key]
        self._banned.add(p.key)
        self._requeue(p, list(p.out), now, cancel=True)
        for mh in p.probes:
            block = self._blocks.get(mh)
            if block is not None:
                p.outbox.append(WantEntry(block.cid, cancel=True))
        self._flush(p, self._actions)
        self._actions.append(PeerDropped(p.key, reason))

    def _flush(self, p: _Peer[P], actions: list[Action[P]]) -> None:
        while p.outbox:
            chunk = p.outbox[: limits.BITSWAP_MAX_WANTLIST_ENTRIES]
            del p.outbox[: limits.BITSWAP_MAX_WANTLIST_ENTRIES]
            actions.append(SendWants(p.key, tuple(chunk)))

    def _window(self, p: _Peer[P]) -> int:
        cfg = self.config
        if p.rate is None or self._avg_block is None:
            w = cfg.initial_window
        else:
            # cover the round trip (bandwidth-delay product) plus queue_target of queueing
            span = cfg.queue_target + (p.latency or 0.0)
            w = math.ceil(p.rate * span / max(self._avg_block, 1.0))
        return max(cfg.min_window, min(w, p.cap, self._max_window()))

    def _max_window(self) -> int:
        """Blocks in flight to one peer at most: ``max_window``, or for small blocks as many as
        make ``max_window_bytes`` at the mean block size (so 1 KB files are not fetched 64 at a
        time), never more than ``max_window_blocks``."""
        cfg = self.config
        if not self._avg_block:
            return cfg.max_window
        by_bytes = int(cfg.max_window_bytes / self._avg_block)
        return max(cfg.max_window, min(by_bytes, cfg.max_window_blocks))

    def _refill(self, p: _Peer[P]) -> int:
        """Free window slots a peer needs before it is sent more wants (one message for several)."""
        return max(1, int(self._window(p) * self.config.refill_fraction))

    def _eta(self, p: _Peer[P], size: int) -> float:
        """Seconds until ``p`` would deliver one more block of ``size`` bytes."""
        rate = p.rate or min(self._prior_rate, 1e12)  # unmeasured: ordered by load
        return (p.latency or 0.0) + (p.out_bytes + size) / rate

    def _estimate(self, block: _Block) -> int:
        return block.size_hint or int(self._avg_block or 0)

    def _send(self, p: _Peer[P], block: _Block, now: float) -> None:
        mh = block.cid.multihash
        if not p.out:
            p.mark = now
            p.quiet_since = now
        est = self._estimate(block)
        p.out[mh] = (now, est)
        p.out_bytes += est
        block.holders.append(p.key)
        block.state = _OUTSTANDING
        if not block.priority:
            block.priority = self._priority
            self._priority = max(1, self._priority - 1)
        p.probes.discard(mh)
        p.outbox.append(WantEntry(block.cid, block.priority, send_dont_have=p.supports_have))

    # --- scheduling ---
    def _assign(self, now: float) -> None:
        active = [p for p in self._peers.values() if p.active]
        free = [p for p in active if len(p.out) <= self._window(p) - self._refill(p)]
        deferred: list[bytes] = []
        scanned = 0
        while free and scanned < _SCAN_LIMIT and self._has_pending():
            mh = self._pending.popleft()
            block = self._blocks[mh]
            cands = [p for p in free if mh not in p.dont_have]
            if not cands:
                scanned += 1
                if any(mh not in p.dont_have for p in active):
                    deferred.append(mh)
                else:
                    block.state = _STALLED
                    self._stalled.append(mh)
                continue
            est = self._estimate(block)
            best = min(cands, key=lambda q: self._eta(q, est))
            self._send(best, block, now)
            if len(best.out) >= self._window(best):
                free.remove(best)
        self._pending.extendleft(reversed(deferred))

    def _endgame(self, now: float) -> None:
        if self._has_pending() or self._unchecked:
            return
        free = [p for p in self._peers.values() if p.active and len(p.out) < self._window(p)]
        if not free:
            return
        # how long each outstanding block is still expected to take at its current holder
        remaining: list[tuple[float, _Block]] = []
        for h in self._peers.values():
            ahead = 0
            rate = h.rate or 0.0
            for mh, (sent_at, est) in h.out.items():
                ahead += est
                block = self._blocks[mh]
                if len(block.holders) >= self.config.max_copies:
                    continue
                left = ahead / rate if rate else math.inf
                remaining.append((max(left, now - sent_at), block))
        remaining.sort(key=lambda item: -item[0])
        for left, block in remaining:
            mh = block.cid.multihash
            cands = [
                p for p in free
                if len(p.out) < self._window(p) and p.key not in block.holders
                and mh not in p.dont_have
            ]  # fmt: skip
            if not cands:
                continue
            est = self._estimate(block)
            best = min(cands, key=lambda q: self._eta(q, est))
            if self._eta(best, est) < self.config.endgame_margin * left:
                self._copied.add(mh)
                self._send(best, block, now)

    def _idle_limit(self, p: _Peer[P]) -> float:
        """Silence allowed: ``idle_timeout``, or 3x the time to send what it owes us at its rate."""
        return max(self.config.idle_timeout, 3 * p.out_bytes / (p.rate or self._prior_rate))

    def _timeouts(self, now: float) -> None:
        cfg = self.config
        for p in list(self._peers.values()):
            if p.out and now - p.quiet_since >= self._idle_limit(p):
                p.strikes += 1
                if p.strikes >= cfg.max_strikes:
                    self._drop(p, f"no answer in time, {p.strikes} times", now)
                    continue
                self._requeue(p, list(p.out), now, cancel=True)
                p.cap = cfg.min_window
                p.rate = p.rate / 2 if p.rate is not None else None
                p.quiet_since = now

    def _probeable(self, p: _Peer[P]) -> bool:
        return not p.active and p.supports_have

    def _probe_targets(self) -> list[_Block]:
        """The root while it is wanted, and the first stalled and pending blocks."""
        targets: list[_Block] = []
        for mh in [self.root.multihash, *self._stalled[:2], *islice(self._pending, 2)]:
            block = self._blocks.get(mh)
            if block is not None and block.state >= _PENDING and block not in targets:
                targets.append(block)
        return targets

    def _probe(self, now: float) -> None:
        """Want-have probes (with DONT_HAVE requested) to peers not known to have the content."""
        targets = self._probe_targets()
        if not targets:
            return
        for p in self._peers.values():
            if not self._probeable(p) or now < p.next_probe:
                continue
            p.next_probe = now + self.config.probe_interval
            for block in targets:
                mh = block.cid.multihash
                if mh not in p.probes and mh not in p.dont_have:
                    p.probes.add(mh)
                    p.outbox.append(
                        WantEntry(block.cid, block.priority or self._priority,
                                  want_type=WantType.HAVE, send_dont_have=True)
                    )  # fmt: skip
