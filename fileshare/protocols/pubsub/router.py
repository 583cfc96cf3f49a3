"""The gossipsub v1.1 router (with v1.2 IDONTWANT, and v1.0/floodsub peers), sans-io.

The driver reports connections (``add_peer``/``remove_peer``), decoded RPCs (``handle_rpc``), the
heartbeat tick (``heartbeat``) and application calls (``subscribe``, ``publish``); every call takes
``now`` (seconds, monotonic) and returns an ``Output``: ``(peer, RPC)`` pairs to send, messages
delivered to the application, and PX peers the driver may dial. Messages are StrictSign; ids come
from ``GossipConfig.msg_id_fn`` (``from || seqno`` by default). Randomness comes from ``rng`` and
every random choice is made over sorted candidates, so a seeded run is reproducible.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable

from ...errors import DecodeError, LimitExceeded
from ...identity.keys import PrivateKey
from ...identity.peerid import PeerId
from ...limits import (
    PUBSUB_MAX_BACKOFF,
    PUBSUB_MAX_PENDING_PROMISES,
    PUBSUB_MAX_PX_PEERS,
    PUBSUB_MAX_SEEN,
)
from .rpc import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V12,
    PROTOCOLS,
    RPC,
    Graft,
    IHave,
    Message,
    PeerInfo,
    Prune,
    SubOpts,
    decode_rpc,
    message_wire_size,
)
from .score import PeerScore, ScoreParams
from .signing import seqno_int, sign_message, verify_strict
from .state import (
    RPC_OVERHEAD,
    Delivered,
    GossipConfig,
    MessageCache,
    Outbox,
    Output,
    PeerState,
    PromiseTracker,
    SeenCache,
    Validation,
    Validator,
)

__all__ = [
    "Delivered",
    "GossipConfig",
    "GossipRouter",
    "MessageCache",
    "Output",
    "Validation",
    "Validator",
]


class GossipRouter:
    """Gossipsub state for one local peer. Not thread-safe; one driver task calls it."""

    def __init__(
        self,
        key: PrivateKey,
        config: GossipConfig | None = None,
        score_params: ScoreParams | None = None,
        rng: random.Random | None = None,
        seqno_start: int | None = None,
    ) -> None:
        self.config = config or GossipConfig()
        self.local_peer = PeerId.from_public_key(key.public_key())
        self.stats: Counter[str] = Counter()
        self._key = key
        self._rng = rng or random.Random()
        self._seqno = seqno_start if seqno_start is not None else self._rng.getrandbits(62)
        self._score = PeerScore(score_params)
        self.thresholds = self._score.thresholds
        self._peers: dict[PeerId, PeerState] = {}
        self._mesh: dict[str, set[PeerId]] = {}  # keys: the topics we are subscribed to
        self._fanout: dict[str, set[PeerId]] = {}
        self._fanout_last: dict[str, float] = {}
        self._backoff: dict[str, dict[PeerId, float]] = {}
        self._seen = SeenCache(self.config.seen_ttl, PUBSUB_MAX_SEEN)
        self._mcache = MessageCache(self.config.mcache_len, self.config.mcache_gossip)
        self._promises = PromiseTracker(PUBSUB_MAX_PENDING_PROMISES)
        self._validators: dict[str, Validator] = {}
        self._ticks = 0

    # --- queries ---

    @property
    def subscriptions(self) -> frozenset[str]:
        return frozenset(self._mesh)

    def mesh_peers(self, topic: str) -> frozenset[PeerId]:
        return frozenset(self._mesh.get(topic, ()))

    def fanout_peers(self, topic: str) -> frozenset[PeerId]:
        return frozenset(self._fanout.get(topic, ()))

    def peers(self) -> frozenset[PeerId]:
        return frozenset(self._peers)

    def peer_topics(self, peer: PeerId) -> frozenset[str]:
        st = self._peers.get(peer)
        return frozenset(st.topics) if st else frozenset()

    def score(self, peer: PeerId, now: float) -> float:
        return self._score.score(peer, now)

    def is_graylisted(self, peer: PeerId, now: float) -> bool:
        return self._score.score(peer, now) < self.thresholds.graylist

    def backoff_until(self, topic: str, peer: PeerId) -> float | None:
        return self._backoff.get(topic, {}).get(peer)

    def seen(self, msg_id: bytes) -> bool:
        return msg_id in self._seen

    def set_validator(self, topic: str, validator: Validator | None) -> None:
        """Run ``validator`` on every new message of ``topic`` before delivery and forwarding."""
        if validator is None:
            self._validators.pop(topic, None)
        else:
            self._validators[topic] = validator

    def add_penalty(self, peer: PeerId, count: float = 1.0) -> None:
        """Behaviour penalty (P7) from the driver, e.g. for a malformed RPC frame."""
        self._score.add_penalty(peer, count)

    # --- peers ---

    def add_peer(self, peer: PeerId, protocol: str, outbound: bool, now: float) -> Output:
        """A pubsub stream to ``peer`` is open; returns the hello with our subscriptions."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unsupported pubsub protocol {protocol}")
        if peer in self._peers:
            return Output()
        self._peers[peer] = PeerState(protocol, outbound)
        self._score.add_peer(peer)
        out = Outbox()
        for topic in sorted(self._mesh):
            out[peer].subs.append(SubOpts(True, topic))
        return Output(sends=out.flush(self._rpc_limit))

    def remove_peer(self, peer: PeerId, now: float) -> None:
        if self._peers.pop(peer, None) is None:
            return
        for topic, mesh in self._mesh.items():
            if peer in mesh:
                mesh.discard(peer)
                self._score.prune(peer, topic, now)
        for fan in self._fanout.values():
            fan.discard(peer)
        self._score.remove_peer(peer, now)

    # --- application ---

    def subscribe(self, topic: str, now: float) -> Output:
        """JOIN: announce, then graft up to D peers (fanout peers first)."""
        if topic in self._mesh:
            return Output()
        out = Outbox()
        for p in sorted(self._peers):
            out[p].subs.append(SubOpts(True, topic))
        mesh = self._mesh[topic] = set()
        scores = self._scores(now)
        fan = self._fanout.pop(topic, set())
        self._fanout_last.pop(topic, None)
        mesh.update(p for p in fan if self._can_graft(p, topic, now, scores))
        self._fill(topic, mesh, self.config.d - len(mesh), now, scores, lambda p: True)
        for p in sorted(mesh):
            self._score.graft(p, topic, now)
            out[p].graft.append(Graft(topic))
        return Output(sends=out.flush(self._rpc_limit))

    def unsubscribe(self, topic: str, now: float) -> Output:
        """LEAVE: announce, PRUNE every mesh peer with the unsubscribe backoff."""
        mesh = self._mesh.pop(topic, None)
        if mesh is None:
            return Output()
        out = Outbox()
        for p in sorted(self._peers):
            out[p].subs.append(SubOpts(False, topic))
        for p in sorted(mesh):
            self._score.prune(p, topic, now)
            self._prune(p, topic, now, out, px=True, backoff=self.config.unsubscribe_backoff)
        return Output(sends=out.flush(self._rpc_limit))

    def publish(self, topic: str, data: bytes, now: float) -> tuple[bytes, Output]:
        """Sign and send our own message; returns its id. Not delivered back to us."""
        self._seqno += 1
        msg = sign_message(self._key, topic, data, self._seqno)
        if message_wire_size(msg) > self.config.max_message_size:
            raise LimitExceeded(f"pubsub message exceeds {self.config.max_message_size} bytes")
        msg_id = self.config.msg_id_fn(msg)
        self._seen.add(msg_id, now)
        self._mcache.put(msg_id, msg)
        scores = self._scores(now)
        pub = self.thresholds.publish
        in_topic = [p for p, st in self._peers.items() if topic in st.topics and scores[p] >= pub]
        if self.config.flood_publish:
            targets = set(in_topic)
        else:
            targets = {p for p in in_topic if self._peers[p].protocol == FLOODSUB_ID}
            if topic in self._mesh:
                targets |= self._mesh[topic]
            else:
                fan = self._fanout.setdefault(topic, set())
                if not fan:
                    cands = [p for p in in_topic if self._peers[p].protocol != FLOODSUB_ID]
                    fan.update(self._sample(cands, self.config.d))
                self._fanout_last[topic] = now
                targets |= fan
        out = Outbox()
        for p in targets:
            out[p].msgs.append(msg)
        self.stats["published"] += 1
        return msg_id, Output(sends=out.flush(self._rpc_limit))

    # --- incoming ---

    def handle_frame(self, peer: PeerId, data: bytes, now: float) -> Output:
        """Decode and handle one RPC frame; a malformed frame costs a penalty and is re-raised."""
        try:
            rpc = decode_rpc(data)
        except (DecodeError, LimitExceeded):
            self.stats["bad_frame"] += 1
            self._score.add_penalty(peer)
            raise
        return self.handle_rpc(peer, rpc, now)

    def handle_rpc(self, peer: PeerId, rpc: RPC, now: float) -> Output:
        st = self._peers.get(peer)
        result = Output()
        if st is None:
            self.stats["rpc_from_unknown_peer"] += 1
            return result
        if self.is_graylisted(peer, now):
            self.stats["graylisted_rpc"] += 1
            return result
        out = Outbox()
        for sub in rpc.subscriptions:
            self._handle_sub(peer, st, sub, now)
        for msg in rpc.publish:
            self._handle_message(peer, msg, now, out, result)
        ctl = rpc.control
        if ctl is not None and st.protocol != FLOODSUB_ID:
            for g in ctl.graft:
                self._handle_graft(peer, st, g.topic, now, out)
            for pr in ctl.prune:
                self._handle_prune(peer, pr, now, result)
            want = self._handle_ihave(peer, st, ctl.ihave, now)
            if want:
                out[peer].iwant.extend(want)
            for iw in ctl.iwant:
                self._handle_iwant(peer, iw.message_ids, now, out)
            for dw in ctl.idontwant:
                for mid in dw.message_ids:
                    if st.idontwant_ids >= self.config.max_idontwant:
                        self.stats["idontwant_over_limit"] += 1
                        break
                    st.idontwant_ids += 1
                    st.dont_send[mid] = now + self.config.idontwant_ttl
        result.sends = out.flush(self._rpc_limit)
        return result

    def _handle_sub(self, peer: PeerId, st: PeerState, sub: SubOpts, now: float) -> None:
        if sub.subscribe:
            if sub.topic not in st.topics and len(st.topics) >= self.config.max_topics_per_peer:
                self.stats["peer_topics_over_limit"] += 1
                return
            st.topics.add(sub.topic)
            return
        st.topics.discard(sub.topic)
        mesh = self._mesh.get(sub.topic)
        if mesh is not None and peer in mesh:
            mesh.discard(peer)
            self._score.prune(peer, sub.topic, now)
        self._fanout.get(sub.topic, set()).discard(peer)

    def _handle_message(
        self, src: PeerId, msg: Message, now: float, out: Outbox, result: Output
    ) -> None:
        cfg = self.config
        if message_wire_size(msg) > cfg.max_message_size:
            self.stats["oversized"] += 1
            return
        if msg.topic not in self._mesh:
            self.stats["not_subscribed"] += 1
            return
        msg_id = cfg.msg_id_fn(msg)
        if msg_id in self._seen:
            self.stats["duplicate"] += 1
            self._score.duplicate(src, msg_id, now)
            return
        if not verify_strict(msg):
            self.stats["invalid_signature"] += 1
            self._score.rejected(src, None, msg.topic, now)
            return
        self._promises.fulfil(msg_id)
        self._seen.add(msg_id, now)
        if msg.from_peer == self.local_peer.bytes:
            self.stats["own_message"] += 1
            return
        if msg.data is not None and len(msg.data) >= cfg.idontwant_min_size:
            for p in self._mesh[msg.topic]:
                if p != src and self._peers[p].protocol == MESHSUB_V12:
                    out[p].idontwant.append(msg_id)
        verdict = self._validate(src, msg)
        if verdict is Validation.REJECT:
            self.stats["rejected"] += 1
            self._score.rejected(src, msg_id, msg.topic, now)
            return
        if verdict is Validation.IGNORE:
            self.stats["ignored"] += 1
            self._score.ignored(src, msg_id, msg.topic, now)
            return
        self._score.validated(src, msg_id, msg.topic, now)
        self._mcache.put(msg_id, msg)
        self.stats["delivered"] += 1
        author = PeerId(msg.from_peer or b"")
        result.delivered.append(
            Delivered(msg.topic, msg.data or b"", author, seqno_int(msg) or 0, msg_id, src, msg)
        )
        targets = set(self._mesh[msg.topic])
        targets.update(
            p
            for p, st in self._peers.items()
            if st.protocol == FLOODSUB_ID
            and msg.topic in st.topics
            and self._score.score(p, now) >= self.thresholds.publish
        )
        for p in targets:
            if p in (src, author):
                continue
            if msg_id in self._peers[p].dont_send:
                self.stats["idontwant_skipped"] += 1
                continue
            out[p].msgs.append(msg)

    def _validate(self, src: PeerId, msg: Message) -> Validation:
        validator = self._validators.get(msg.topic)
        if validator is None:
            return Validation.ACCEPT
        try:
            return validator(src, msg)
        except Exception:  # a buggy validator must not break the router
            self.stats["validator_error"] += 1
            return Validation.IGNORE

    def _handle_graft(
        self, peer: PeerId, st: PeerState, topic: str, now: float, out: Outbox
    ) -> None:
        mesh = self._mesh.get(topic)
        if mesh is None:
            self.stats["graft_unknown_topic"] += 1  # v1.1 spam protection: no PRUNE
            return
        if peer in mesh:
            return
        expiry = self._backoff.get(topic, {}).get(peer)
        if expiry is not None and now < expiry:
            self.stats["graft_in_backoff"] += 1
            self._score.add_penalty(peer)
            if now < expiry - self.config.prune_backoff + self.config.graft_flood_window:
                self._score.add_penalty(peer)  # grafted right after our PRUNE
            self._prune(peer, topic, now, out, px=False)
            return
        if self._score.score(peer, now) < 0:
            self._prune(peer, topic, now, out, px=False)
            return
        if len(mesh) >= self.config.d_hi and not st.outbound:
            self._prune(peer, topic, now, out, px=True)
            return
        mesh.add(peer)
        self._score.graft(peer, topic, now)

    def _handle_prune(self, peer: PeerId, prune: Prune, now: float, result: Output) -> None:
        mesh = self._mesh.get(prune.topic)
        if mesh is not None and peer in mesh:
            mesh.discard(peer)
            self._score.prune(peer, prune.topic, now)
        backoff = self.config.prune_backoff
        if prune.backoff is not None:
            backoff = min(float(prune.backoff), PUBSUB_MAX_BACKOFF)
        self._add_backoff(prune.topic, peer, now + backoff)
        if prune.peers:
            if self._score.score(peer, now) < self.thresholds.accept_px:
                self.stats["px_ignored"] += 1
                return
            room = PUBSUB_MAX_PX_PEERS - len(result.px)
            result.px.extend([i for i in prune.peers if i.peer_id is not None][:room])

    def _handle_ihave(
        self, peer: PeerId, st: PeerState, ihaves: Iterable[IHave], now: float
    ) -> list[bytes]:
        if self._score.score(peer, now) < self.thresholds.gossip:
            return []
        want: list[bytes] = []
        asked: set[bytes] = set()
        for ih in ihaves:
            st.ihave_msgs += 1
            if st.ihave_msgs > self.config.max_ihave_messages:
                self.stats["ihave_over_limit"] += 1
                break
            if ih.topic not in self._mesh:
                continue
            for mid in ih.message_ids:
                if mid in self._seen or mid in asked:
                    continue
                if st.ihave_ids >= self.config.max_ihave_length:
                    self.stats["ihave_ids_over_limit"] += 1
                    break
                st.ihave_ids += 1
                asked.add(mid)
                want.append(mid)
        if want:
            deadline = now + self.config.iwant_followup
            self._promises.add(self._rng.choice(want), peer, deadline)
        return want

    def _handle_iwant(self, peer: PeerId, ids: Iterable[bytes], now: float, out: Outbox) -> None:
        if self._score.score(peer, now) < self.thresholds.gossip:
            return
        for mid in ids:
            msg = self._mcache.get(mid)
            if msg is None:
                continue
            if self._mcache.serve(mid, peer) > self.config.max_iwant_replies:
                self.stats["iwant_over_limit"] += 1
                continue
            out[peer].msgs.append(msg)

    # --- heartbeat ---

    def heartbeat(self, now: float) -> Output:
        """Mesh and fanout maintenance, gossip emission, cache shifts, score decay."""
        cfg = self.config
        self._ticks += 1
        self._score.refresh(now)
        for st in self._peers.values():
            st.ihave_msgs = st.ihave_ids = st.idontwant_ids = 0
            if st.dont_send:
                st.dont_send = {m: t for m, t in st.dont_send.items() if t > now}
        for p in self._promises.expired(now):
            self.stats["broken_promise"] += 1
            self._score.add_penalty(p)
        for topic in list(self._backoff):
            entries = {
                p: t for p, t in self._backoff[topic].items() if t + cfg.heartbeat_interval > now
            }
            if entries:
                self._backoff[topic] = entries
            else:
                del self._backoff[topic]
        scores = self._scores(now)
        out = Outbox()
        for topic, mesh in self._mesh.items():
            self._maintain(topic, mesh, scores, now, out)
            self._gossip(topic, mesh, scores, out)
        for topic in list(self._fanout):
            if self._fanout_last.get(topic, now) + cfg.fanout_ttl < now:
                del self._fanout[topic]
                self._fanout_last.pop(topic, None)
                continue
            fan = self._fanout[topic] = {
                p
                for p in self._fanout[topic]
                if p in self._peers
                and topic in self._peers[p].topics
                and scores[p] >= self.thresholds.publish
            }
            if len(fan) < cfg.d:
                cands = self._meshsub_peers(topic, lambda p: scores[p] >= self.thresholds.publish)
                fan.update(self._sample([p for p in cands if p not in fan], cfg.d - len(fan)))
            self._gossip(topic, fan, scores, out)
        self._mcache.shift()
        self._seen.expire(now)
        return Output(sends=out.flush(self._rpc_limit))

    def _maintain(
        self, topic: str, mesh: set[PeerId], scores: dict[PeerId, float], now: float, out: Outbox
    ) -> None:
        cfg = self.config
        for p in sorted(mesh):
            if scores[p] < 0:
                mesh.discard(p)
                self._score.prune(p, topic, now)
                self._prune(p, topic, now, out, px=False)
        if len(mesh) < cfg.d_lo:
            self._graft_new(topic, mesh, cfg.d - len(mesh), now, scores, out, lambda p: True)
        if len(mesh) > cfg.d_hi:
            ranked = self._sample(list(mesh), len(mesh))
            ranked.sort(key=lambda p: -scores[p])
            keep = ranked[: cfg.d_score]
            keep += self._sample(ranked[cfg.d_score :], cfg.d - cfg.d_score)
            short = cfg.d_out - sum(self._peers[p].outbound for p in keep)
            if short > 0:
                spare = [p for p in ranked if p not in keep and self._peers[p].outbound]
                inbound = [p for p in reversed(keep) if not self._peers[p].outbound]
                for new, old in zip(spare[:short], inbound, strict=False):
                    keep[keep.index(old)] = new
            for p in sorted(mesh - set(keep)):
                mesh.discard(p)
                self._score.prune(p, topic, now)
                self._prune(p, topic, now, out, px=True)
        if len(mesh) >= cfg.d_lo:
            short = cfg.d_out - sum(self._peers[p].outbound for p in mesh)
            if short > 0:
                outbound = lambda p: self._peers[p].outbound  # noqa: E731
                self._graft_new(topic, mesh, short, now, scores, out, outbound)
        if self._ticks % cfg.opportunistic_graft_ticks == 0 and len(mesh) > 1:
            median = statistics.median(scores[p] for p in mesh)
            if median < self.thresholds.opportunistic_graft:
                n = cfg.opportunistic_graft_peers
                self._graft_new(topic, mesh, n, now, scores, out, lambda p: scores[p] > median)

    def _graft_new(
        self,
        topic: str,
        mesh: set[PeerId],
        n: int,
        now: float,
        scores: dict[PeerId, float],
        out: Outbox,
        extra: Callable[[PeerId], bool],
    ) -> None:
        for p in self._fill(topic, mesh, n, now, scores, extra):
            self._score.graft(p, topic, now)
            out[p].graft.append(Graft(topic))

    def _fill(
        self,
        topic: str,
        mesh: set[PeerId],
        n: int,
        now: float,
        scores: dict[PeerId, float],
        extra: Callable[[PeerId], bool],
    ) -> list[PeerId]:
        """Add up to ``n`` random eligible peers to ``mesh``; returns them."""
        if n <= 0:
            return []
        cands = [
            p
            for p in self._peers
            if p not in mesh and self._can_graft(p, topic, now, scores) and extra(p)
        ]
        picked = self._sample(cands, n)
        mesh.update(picked)
        return picked

    def _can_graft(self, p: PeerId, topic: str, now: float, scores: dict[PeerId, float]) -> bool:
        st = self._peers.get(p)
        if st is None or st.protocol == FLOODSUB_ID or topic not in st.topics or scores[p] < 0:
            return False
        expiry = self._backoff.get(topic, {}).get(p)
        return expiry is None or expiry + self.config.heartbeat_interval <= now

    def _gossip(
        self, topic: str, exclude: set[PeerId], scores: dict[PeerId, float], out: Outbox
    ) -> None:
        ids = self._mcache.gossip_ids(topic)
        if not ids:
            return
        if len(ids) > self.config.max_ihave_length:
            ids = self._rng.sample(ids, self.config.max_ihave_length)
        gossip = self.thresholds.gossip
        cands = self._meshsub_peers(topic, lambda p: p not in exclude and scores[p] >= gossip)
        n = max(self.config.d_lazy, int(self.config.gossip_factor * len(cands)))
        for p in self._sample(cands, n):
            out[p].ihave.append(IHave(topic, tuple(ids)))

    # --- helpers ---

    def _prune(
        self,
        peer: PeerId,
        topic: str,
        now: float,
        out: Outbox,
        px: bool,
        backoff: float | None = None,
    ) -> None:
        """Queue a PRUNE to ``peer`` and start our own backoff for it."""
        backoff = self.config.prune_backoff if backoff is None else backoff
        self._add_backoff(topic, peer, now + backoff)
        st = self._peers.get(peer)
        if st is None:
            return
        if st.protocol == MESHSUB_V10:
            out[peer].prune.append(Prune(topic))
            return
        infos: tuple[PeerInfo, ...] = ()
        if px and self.config.do_px and self._score.score(peer, now) >= 0:
            ok = lambda p: p != peer and self._score.score(p, now) >= 0  # noqa: E731
            cands = self._meshsub_peers(topic, ok)
            infos = tuple(PeerInfo(p.bytes) for p in self._sample(cands, self.config.px_peers))
        out[peer].prune.append(Prune(topic, infos, int(backoff)))

    def _add_backoff(self, topic: str, peer: PeerId, until: float) -> None:
        entries = self._backoff.setdefault(topic, {})
        entries[peer] = max(until, entries.get(peer, until))

    def _meshsub_peers(self, topic: str, pred: Callable[[PeerId], bool]) -> list[PeerId]:
        """Gossipsub (not floodsub) peers subscribed to ``topic`` that satisfy ``pred``."""
        return [
            p
            for p, st in self._peers.items()
            if topic in st.topics and st.protocol != FLOODSUB_ID and pred(p)
        ]

    def _scores(self, now: float) -> dict[PeerId, float]:
        return {p: self._score.score(p, now) for p in self._peers}

    def _sample(self, cands: list[PeerId], n: int) -> list[PeerId]:
        ordered = sorted(cands)
        return self._rng.sample(ordered, min(max(n, 0), len(ordered)))

    @property
    def _rpc_limit(self) -> int:
        return self.config.max_message_size + RPC_OVERHEAD
