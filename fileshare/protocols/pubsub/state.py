"""Gossipsub configuration, the router's result types, and its buffers (mcache, outbox)."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice

from ...identity.peerid import PeerId
from ...limits import (
    PUBSUB_D,
    PUBSUB_D_HI,
    PUBSUB_D_LAZY,
    PUBSUB_D_LO,
    PUBSUB_D_OUT,
    PUBSUB_D_SCORE,
    PUBSUB_FANOUT_TTL,
    PUBSUB_GOSSIP_FACTOR,
    PUBSUB_GRAFT_FLOOD_WINDOW,
    PUBSUB_HEARTBEAT_INTERVAL,
    PUBSUB_IDONTWANT_MIN_SIZE,
    PUBSUB_IDONTWANT_TTL,
    PUBSUB_IWANT_FOLLOWUP,
    PUBSUB_MAX_IDONTWANT_PER_HEARTBEAT,
    PUBSUB_MAX_IHAVE_LENGTH,
    PUBSUB_MAX_IHAVE_MESSAGES,
    PUBSUB_MAX_IWANT_REPLIES,
    PUBSUB_MAX_MESSAGE,
    PUBSUB_MAX_TOPICS_PER_PEER,
    PUBSUB_MCACHE_GOSSIP,
    PUBSUB_MCACHE_LEN,
    PUBSUB_OPPORTUNISTIC_GRAFT_PEERS,
    PUBSUB_OPPORTUNISTIC_GRAFT_TICKS,
    PUBSUB_PRUNE_BACKOFF,
    PUBSUB_PX_PEERS,
    PUBSUB_SEEN_TTL,
    PUBSUB_UNSUBSCRIBE_BACKOFF,
)
from .rpc import (
    RPC,
    ControlMessage,
    Graft,
    IDontWant,
    IHave,
    IWant,
    Message,
    PeerInfo,
    Prune,
    SubOpts,
    encode_control,
    message_wire_size,
)
from .signing import MessageIdFn, default_message_id

RPC_OVERHEAD = 64  # room left in an RPC for its envelope around one maximal message


class Validation(Enum):
    ACCEPT = "accept"  # deliver and forward
    REJECT = "reject"  # drop, P4 penalty for the sender
    IGNORE = "ignore"  # drop without penalty


Validator = Callable[[PeerId, Message], Validation]


@dataclass(frozen=True, slots=True)
class GossipConfig:
    d: int = PUBSUB_D
    d_lo: int = PUBSUB_D_LO
    d_hi: int = PUBSUB_D_HI
    d_out: int = PUBSUB_D_OUT
    d_score: int = PUBSUB_D_SCORE
    d_lazy: int = PUBSUB_D_LAZY
    gossip_factor: float = PUBSUB_GOSSIP_FACTOR
    heartbeat_interval: float = PUBSUB_HEARTBEAT_INTERVAL
    fanout_ttl: float = PUBSUB_FANOUT_TTL
    mcache_len: int = PUBSUB_MCACHE_LEN
    mcache_gossip: int = PUBSUB_MCACHE_GOSSIP
    seen_ttl: float = PUBSUB_SEEN_TTL
    prune_backoff: float = PUBSUB_PRUNE_BACKOFF
    unsubscribe_backoff: float = PUBSUB_UNSUBSCRIBE_BACKOFF
    graft_flood_window: float = PUBSUB_GRAFT_FLOOD_WINDOW
    flood_publish: bool = True
    do_px: bool = True
    px_peers: int = PUBSUB_PX_PEERS
    max_message_size: int = PUBSUB_MAX_MESSAGE - RPC_OVERHEAD  # encoded Message bytes
    max_topics_per_peer: int = PUBSUB_MAX_TOPICS_PER_PEER
    max_ihave_messages: int = PUBSUB_MAX_IHAVE_MESSAGES
    max_ihave_length: int = PUBSUB_MAX_IHAVE_LENGTH
    max_iwant_replies: int = PUBSUB_MAX_IWANT_REPLIES
    iwant_followup: float = PUBSUB_IWANT_FOLLOWUP
    max_idontwant: int = PUBSUB_MAX_IDONTWANT_PER_HEARTBEAT
    idontwant_min_size: int = PUBSUB_IDONTWANT_MIN_SIZE
    idontwant_ttl: float = PUBSUB_IDONTWANT_TTL
    opportunistic_graft_ticks: int = PUBSUB_OPPORTUNISTIC_GRAFT_TICKS
    opportunistic_graft_peers: int = PUBSUB_OPPORTUNISTIC_GRAFT_PEERS
    msg_id_fn: MessageIdFn = default_message_id

    def __post_init__(self) -> None:
        if not (0 <= self.d_lo <= self.d <= self.d_hi and self.d_out < max(self.d_lo, 1)):
            raise ValueError("need d_lo <= d <= d_hi and d_out < d_lo")
        if self.d_out > self.d // 2 or self.d_score > self.d:
            raise ValueError("need d_out <= d/2 and d_score <= d")


@dataclass(frozen=True, slots=True)
class Delivered:
    """A new valid message for a topic we are subscribed to."""

    topic: str
    data: bytes
    author: PeerId
    seqno: int
    msg_id: bytes
    received_from: PeerId
    message: Message


@dataclass(slots=True)
class Output:
    sends: list[tuple[PeerId, RPC]] = field(default_factory=list)
    delivered: list[Delivered] = field(default_factory=list)
    px: list[PeerInfo] = field(default_factory=list)  # accepted peer exchange: peers to dial


class MessageCache:
    """Messages of the last ``length`` heartbeats; the newest ``gossip`` windows are gossiped."""

    def __init__(self, length: int, gossip: int) -> None:
        self.length, self.gossip = length, gossip
        self._windows: deque[list[tuple[bytes, str]]] = deque([[]])
        self._msgs: dict[bytes, Message] = {}
        self._served: dict[bytes, Counter[PeerId]] = {}

    def put(self, msg_id: bytes, msg: Message) -> None:
        if msg_id not in self._msgs:
            self._msgs[msg_id] = msg
            self._windows[0].append((msg_id, msg.topic))

    def get(self, msg_id: bytes) -> Message | None:
        return self._msgs.get(msg_id)

    def serve(self, msg_id: bytes, peer: PeerId) -> int:
        """Count one IWANT answer of ``msg_id`` to ``peer``; returns the count so far."""
        counts = self._served.setdefault(msg_id, Counter())
        counts[peer] += 1
        return counts[peer]

    def gossip_ids(self, topic: str) -> list[bytes]:
        return [m for w in islice(self._windows, self.gossip) for m, t in w if t == topic]

    def shift(self) -> None:
        self._windows.appendleft([])
        while len(self._windows) > self.length:
            for msg_id, _topic in self._windows.pop():
                self._msgs.pop(msg_id, None)
                self._served.pop(msg_id, None)


@dataclass(slots=True)
class Pending:
    subs: list[SubOpts] = field(default_factory=list)
    msgs: list[Message] = field(default_factory=list)
    ihave: list[IHave] = field(default_factory=list)
    iwant: list[bytes] = field(default_factory=list)
    graft: list[Graft] = field(default_factory=list)
    prune: list[Prune] = field(default_factory=list)
    idontwant: list[bytes] = field(default_factory=list)


class Outbox:
    """Collects everything for each peer during one call, then packs it into RPCs."""

    def __init__(self) -> None:
        self.q: dict[PeerId, Pending] = {}

    def __getitem__(self, peer: PeerId) -> Pending:
        pending = self.q.get(peer)
        if pending is None:
            pending = self.q[peer] = Pending()
        return pending

    def flush(self, limit: int) -> list[tuple[PeerId, RPC]]:
        out: list[tuple[PeerId, RPC]] = []
        for peer in sorted(self.q):
            p = self.q[peer]
            ctl = ControlMessage(
                tuple(p.ihave),
                (IWant(tuple(p.iwant)),) if p.iwant else (),
                tuple(p.graft),
                tuple(p.prune),
                (IDontWant(tuple(p.idontwant)),) if p.idontwant else (),
            )
            head: ControlMessage | None = None if ctl.is_empty() else ctl
            subs = tuple(p.subs)
            size = 8 + sum(len(s.topic) + 8 for s in subs)
            if head is not None and p.msgs:  # the size matters only when messages may split
                size += len(encode_control(head)) + 6
            batch: list[Message] = []
            for m in p.msgs:
                ms = message_wire_size(m)
                if (batch or head is not None or subs) and size + ms > limit:
                    out.append((peer, RPC(subs, tuple(batch), head)))
                    subs, head, batch, size = (), None, [], 8
                batch.append(m)
                size += ms
            if batch or head is not None or subs:
                out.append((peer, RPC(subs, tuple(batch), head)))
        return out


@dataclass(slots=True)
class PeerState:
    """What the router knows about one connected pubsub peer."""

    protocol: str
    outbound: bool
    topics: set[str] = field(default_factory=set)
    ihave_msgs: int = 0  # per heartbeat
    ihave_ids: int = 0
    idontwant_ids: int = 0
    dont_send: dict[bytes, float] = field(default_factory=dict)  # IDONTWANT id -> expiry


class SeenCache:
    """Message ids seen in the last ``ttl`` seconds (at most ``cap``, oldest dropped first)."""

    def __init__(self, ttl: float, cap: int) -> None:
        self.ttl, self.cap = ttl, cap
        self._ids: OrderedDict[bytes, float] = OrderedDict()  # id -> expiry, oldest first

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, msg_id: bytes, now: float) -> None:
        self._ids[msg_id] = now + self.ttl
        self._ids.move_to_end(msg_id)
        if len(self._ids) > self.cap:
            self._ids.popitem(last=False)

    def expire(self, now: float) -> None:
        while self._ids:
            first, expiry = next(iter(self._ids.items()))
            if expiry > now:
                break
            del self._ids[first]


class PromiseTracker:
    """IWANT follow-ups: a peer that advertised an id must deliver it (from anyone) in time."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._promises: OrderedDict[bytes, dict[PeerId, float]] = OrderedDict()

    def add(self, msg_id: bytes, peer: PeerId, deadline: float) -> None:
        if msg_id not in self._promises and len(self._promises) >= self.cap:
            self._promises.popitem(last=False)
        self._promises.setdefault(msg_id, {})[peer] = deadline

    def fulfil(self, msg_id: bytes) -> None:
        self._promises.pop(msg_id, None)

    def expired(self, now: float) -> list[PeerId]:
        """Remove and return the peers whose promises are broken (one entry per promise)."""
        broken: list[PeerId] = []
        for msg_id in list(self._promises):
            peers = self._promises[msg_id]
            for p, deadline in list(peers.items()):
                if deadline <= now:
                    del peers[p]
                    broken.append(p)
            if not peers:
                del self._promises[msg_id]
        return broken
