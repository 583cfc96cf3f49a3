"""Gossipsub v1.1 peer scoring: P1-P4 per topic, P5 (application) and P7 (behaviour).

    score(p) = min(cap, sum_t w_t * (w1 P1 + w2 P2 + w3 P3 + w3b P3b + w4 P4)) + w5 P5 + w7 P7

P1 time in mesh (quanta, capped); P2 first deliveries (capped, decaying); P3 squared deficit of
mesh deliveries below a threshold once a peer has been in the mesh for the activation time (first
or near-first deliveries, within ``mesh_message_deliveries_window`` of the first); P3b sticky
failure penalty added at prune time; P4 squared invalid-message count; P7 squared behaviour
penalty above a threshold. Counters decay every ``decay_interval``. P6 (IP colocation) is not
implemented. Sans-io: every call that needs time takes ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ...identity.peerid import PeerId
from ...limits import PUBSUB_MAX_SEEN, PUBSUB_SCORE_RETAIN, PUBSUB_SEEN_TTL


@dataclass(frozen=True, slots=True)
class TopicScoreParams:
    """Per-topic weights. P3/P3b are off by default: they need the topic's expected message rate."""

    topic_weight: float = 1.0
    time_in_mesh_weight: float = 0.01
    time_in_mesh_quantum: float = 1.0
    time_in_mesh_cap: float = 300.0
    first_message_deliveries_weight: float = 1.0
    first_message_deliveries_decay: float = 0.9
    first_message_deliveries_cap: float = 20.0
    mesh_message_deliveries_weight: float = 0.0
    mesh_message_deliveries_decay: float = 0.9
    mesh_message_deliveries_threshold: float = 1.0
    mesh_message_deliveries_cap: float = 10.0
    mesh_message_deliveries_activation: float = 30.0
    mesh_message_deliveries_window: float = 0.01
    mesh_failure_penalty_weight: float = 0.0
    mesh_failure_penalty_decay: float = 0.9
    invalid_message_deliveries_weight: float = -10.0
    invalid_message_deliveries_decay: float = 0.99


@dataclass(frozen=True, slots=True)
class ScoreThresholds:
    gossip: float = -100.0  # below: no gossip to or from the peer
    publish: float = -200.0  # below: our own messages are not flood-published to the peer
    graylist: float = -400.0  # below: every RPC from the peer is ignored
    accept_px: float = 100.0  # above: PX from the peer's PRUNEs is passed to the driver
    opportunistic_graft: float = 1.0  # median mesh score below this triggers opportunistic grafts

    def __post_init__(self) -> None:
        if not (self.graylist < self.publish <= self.gossip < 0):
            raise ValueError("need graylist < publish <= gossip < 0")
        if self.accept_px < 0 or self.opportunistic_graft < 0:
            raise ValueError("accept_px and opportunistic_graft thresholds must be >= 0")


@dataclass(frozen=True, slots=True)
class ScoreParams:
    topics: Mapping[str, TopicScoreParams] = field(default_factory=dict)
    default_topic: TopicScoreParams | None = (
        TopicScoreParams()
    )  # unconfigured topics; None: unscored
    topic_score_cap: float = 100.0  # cap on the (positive) sum of topic contributions
    app_specific_weight: float = 1.0
    app_specific_score: Callable[[PeerId], float] | None = None
    behaviour_penalty_weight: float = -10.0
    behaviour_penalty_threshold: float = 0.0
    behaviour_penalty_decay: float = 0.99
    decay_interval: float = 1.0
    decay_to_zero: float = 0.01
    retain_score: float = PUBSUB_SCORE_RETAIN
    thresholds: ScoreThresholds = ScoreThresholds()

    def for_topic(self, topic: str) -> TopicScoreParams | None:
        return self.topics.get(topic, self.default_topic)


@dataclass(slots=True)
class _TopicStats:
    in_mesh: bool = False
    graft_time: float = 0.0
    first_deliveries: float = 0.0
    mesh_deliveries: float = 0.0
    mesh_failure_penalty: float = 0.0
    invalid_deliveries: float = 0.0


@dataclass(slots=True)
class _PeerStats:
    connected: bool = True
    expire: float = 0.0
    behaviour_penalty: float = 0.0
    topics: dict[str, _TopicStats] = field(default_factory=dict)


_VALID, _INVALID, _IGNORED = 1, 2, 3


@dataclass(slots=True)
class _Delivery:
    topic: str
    first_seen: float
    status: int
    peers: set[PeerId] = field(default_factory=set)


class PeerScore:
    """Score bookkeeping for every peer we know (connected, or disconnected and retained)."""

    def __init__(self, params: ScoreParams | None = None) -> None:
        self.params = params or ScoreParams()
        self.thresholds = self.params.thresholds
        self._peers: dict[PeerId, _PeerStats] = {}
        self._deliveries: dict[bytes, _Delivery] = {}
        self._last_decay: float | None = None

    # --- peers ---

    def add_peer(self, peer: PeerId) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            self._peers[peer] = _PeerStats()
        else:
            stats.connected = True

    def remove_peer(self, peer: PeerId, now: float) -> None:
        """Leave every mesh (with P3b) and keep a non-positive score for ``retain_score``."""
        stats = self._peers.get(peer)
        if stats is None:
            return
        for topic in list(stats.topics):
            self.prune(peer, topic, now)
        if self.score(peer, now) > 0:
            del self._peers[peer]
            return
        stats.connected = False
        stats.expire = now + self.params.retain_score

    def _topic(self, peer: PeerId, topic: str) -> tuple[_TopicStats, TopicScoreParams] | None:
        tp = self.params.for_topic(topic)
        stats = self._peers.get(peer)
        if tp is None or stats is None:
            return None
        ts = stats.topics.get(topic)
        if ts is None:
            ts = stats.topics[topic] = _TopicStats()
        return ts, tp

    def graft(self, peer: PeerId, topic: str, now: float) -> None:
        got = self._topic(peer, topic)
        if got is not None:
            ts, _tp = got
            ts.in_mesh, ts.graft_time, ts.mesh_deliveries = True, now, 0.0

    def prune(self, peer: PeerId, topic: str, now: float) -> None:
        """The peer left our mesh: a delivery deficit at this moment becomes sticky P3b."""
        got = self._topic(peer, topic)
        if got is None or not got[0].in_mesh:
            return
        ts, tp = got
        deficit = self._deficit(ts, tp, now)
        ts.mesh_failure_penalty += deficit * deficit
        ts.in_mesh = False

    def add_penalty(self, peer: PeerId, count: float = 1.0) -> None:
        """P7: a behavioural penalty (GRAFT in backoff, broken IWANT promise, bad RPC, ...)."""
        stats = self._peers.get(peer)
        if stats is not None:
            stats.behaviour_penalty += count

    # --- message events ---

    def validated(self, peer: PeerId, msg_id: bytes, topic: str, now: float) -> None:
        """``peer`` delivered ``msg_id`` first and it passed validation."""
        self._record(msg_id, topic, now, _VALID, peer)
        got = self._topic(peer, topic)
        if got is None:
            return
        ts, tp = got
        ts.first_deliveries = min(ts.first_deliveries + 1, tp.first_message_deliveries_cap)
        if ts.in_mesh:
            ts.mesh_deliveries = min(ts.mesh_deliveries + 1, tp.mesh_message_deliveries_cap)

    def rejected(self, peer: PeerId, msg_id: bytes | None, topic: str, now: float) -> None:
        """P4. ``msg_id`` None (e.g. a bad signature: the id may be forged) is not remembered."""
        if msg_id is not None:
            self._record(msg_id, topic, now, _INVALID, peer)
        self._invalid(peer, topic)

    def ignored(self, peer: PeerId, msg_id: bytes, topic: str, now: float) -> None:
        self._record(msg_id, topic, now, _IGNORED, peer)

    def duplicate(self, peer: PeerId, msg_id: bytes, now: float) -> None:
        """A later copy: near-first mesh credit if valid and in time, P4 again if it was invalid."""
        d = self._deliveries.get(msg_id)
        if d is None or peer in d.peers:
            return
        d.peers.add(peer)
        if d.status == _INVALID:
            self._invalid(peer, d.topic)
            return
        got = self._topic(peer, d.topic)
        if d.status != _VALID or got is None:
            return
        ts, tp = got
        if ts.in_mesh and now - d.first_seen <= tp.mesh_message_deliveries_window:
            ts.mesh_deliveries = min(ts.mesh_deliveries + 1, tp.mesh_message_deliveries_cap)

    def _invalid(self, peer: PeerId, topic: str) -> None:
        got = self._topic(peer, topic)
        if got is not None:
            got[0].invalid_deliveries += 1

    def _record(self, msg_id: bytes, topic: str, now: float, status: int, peer: PeerId) -> None:
        if msg_id in self._deliveries:
            return
        if len(self._deliveries) >= PUBSUB_MAX_SEEN:
            del self._deliveries[next(iter(self._deliveries))]
        self._deliveries[msg_id] = _Delivery(topic, now, status, {peer})

    # --- time ---

    def refresh(self, now: float) -> None:
        """Decay counters for each whole ``decay_interval`` elapsed; forget expired peers/records."""
        if self._last_decay is None:
            self._last_decay = now
            return
        steps = int((now - self._last_decay) / self.params.decay_interval)
        if steps <= 0:
            return
        self._last_decay += steps * self.params.decay_interval
        p = self.params
        zero = p.decay_to_zero
        for peer, stats in list(self._peers.items()):
            if not stats.connected and stats.expire <= now:
                del self._peers[peer]
                continue
            stats.behaviour_penalty = _decay(
                stats.behaviour_penalty, p.behaviour_penalty_decay, steps, zero
            )
            for topic, ts in stats.topics.items():
                tp = p.for_topic(topic)
                if tp is None:
                    continue
                ts.first_deliveries = _decay(
                    ts.first_deliveries, tp.first_message_deliveries_decay, steps, zero
                )
                ts.mesh_deliveries = _decay(
                    ts.mesh_deliveries, tp.mesh_message_deliveries_decay, steps, zero
                )
                ts.mesh_failure_penalty = _decay(
                    ts.mesh_failure_penalty, tp.mesh_failure_penalty_decay, steps, zero
                )
                ts.invalid_deliveries = _decay(
                    ts.invalid_deliveries, tp.invalid_message_deliveries_decay, steps, zero
                )
        horizon = now - PUBSUB_SEEN_TTL
        while self._deliveries:
            first = next(iter(self._deliveries))
            if self._deliveries[first].first_seen > horizon:
                break
            del self._deliveries[first]

    @staticmethod
    def _deficit(ts: _TopicStats, tp: TopicScoreParams, now: float) -> float:
        active = ts.in_mesh and now - ts.graft_time > tp.mesh_message_deliveries_activation
        if active and ts.mesh_deliveries < tp.mesh_message_deliveries_threshold:
            return tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
        return 0.0

    def score(self, peer: PeerId, now: float) -> float:
        stats = self._peers.get(peer)
        if stats is None:
            return 0.0
        p = self.params
        topic_sum = 0.0
        for topic, ts in stats.topics.items():
            tp = p.for_topic(topic)
            if tp is None:
                continue
            s = 0.0
            if ts.in_mesh:
                p1 = min((now - ts.graft_time) / tp.time_in_mesh_quantum, tp.time_in_mesh_cap)
                s += tp.time_in_mesh_weight * max(p1, 0.0)
            s += tp.first_message_deliveries_weight * ts.first_deliveries
            deficit = self._deficit(ts, tp, now)
            s += tp.mesh_message_deliveries_weight * deficit * deficit
            s += tp.mesh_failure_penalty_weight * ts.mesh_failure_penalty
            s += tp.invalid_message_deliveries_weight * ts.invalid_deliveries**2
            topic_sum += tp.topic_weight * s
        total = min(topic_sum, p.topic_score_cap) if p.topic_score_cap > 0 else topic_sum
        if p.app_specific_score is not None:
            total += p.app_specific_weight * p.app_specific_score(peer)
        excess = stats.behaviour_penalty - p.behaviour_penalty_threshold
        if excess > 0:
            total += p.behaviour_penalty_weight * excess * excess
        return total


def _decay(value: float, factor: float, steps: int, zero: float) -> float:
    value *= factor**steps
    return 0.0 if value < zero else value
