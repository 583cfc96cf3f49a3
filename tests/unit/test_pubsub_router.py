"""Gossipsub router: an in-memory deterministic network of real routers, plus focused scenarios.

Every RPC between routers goes through ``encode_rpc`` and ``GossipRouter.handle_frame`` (decode).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter

import pytest

from fileshare.errors import LimitExceeded
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.limits import PUBSUB_D, PUBSUB_D_HI, PUBSUB_D_LO, PUBSUB_MAX_MESSAGE
from fileshare.protocols.pubsub import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V11,
    MESHSUB_V12,
    RPC,
    ControlMessage,
    Delivered,
    GossipConfig,
    GossipRouter,
    Graft,
    IDontWant,
    IHave,
    IWant,
    Message,
    Output,
    Prune,
    SubOpts,
    Validation,
    encode_rpc,
    sign_message,
)

TOPIC = "fileshare/shares/1"


def make_router(seed: int, config: GossipConfig | None = None) -> GossipRouter:
    rng = random.Random(seed)
    key = PrivateKey.from_seed(rng.randbytes(32))
    return GossipRouter(key, config, rng=random.Random(rng.getrandbits(64)))


class Sim:
    """Discrete-event network: per-link latency 5-50 ms, heartbeats every 1 s at random phases."""

    def __init__(self, n: int, seed: int, config: GossipConfig | None = None) -> None:
        self.rng = random.Random(seed)
        self.nodes = [make_router(self.rng.getrandbits(32), config) for _ in range(n)]
        self.index = {r.local_peer: i for i, r in enumerate(self.nodes)}
        self.now = 0.0
        self.queue: list[tuple[float, int, int, int, bytes]] = []  # (t, seq, dst, src, frame)
        self.seq = 0
        self.delivered: list[list[tuple[float, Delivered]]] = [[] for _ in range(n)]
        self.latency: dict[tuple[int, int], float] = {}
        self.active: set[int] = set()
        self.links: set[tuple[int, int]] = set()

    def start(self, i: int) -> None:
        self.active.add(i)
        self._push(self.now + self.rng.random(), i, -1, b"")

    def _push(self, t: float, dst: int, src: int, frame: bytes) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, dst, src, frame))

    def emit(self, i: int, out: Output) -> None:
        self.delivered[i].extend((self.now, d) for d in out.delivered)
        for peer, rpc in out.sends:
            j = self.index[peer]
            key = (min(i, j), max(i, j))
            lat = self.latency.setdefault(key, self.rng.uniform(0.005, 0.05))
            self._push(self.now + lat, j, i, encode_rpc(rpc))

    def connect(
        self, a: int, b: int, proto_a: str = MESHSUB_V12, proto_b: str = MESHSUB_V12
    ) -> None:
        """``a`` dials ``b``; each side speaks the protocol the other negotiated for it."""
        self.links.add((min(a, b), max(a, b)))
        na, nb = self.nodes[a], self.nodes[b]
        self.emit(a, na.add_peer(nb.local_peer, proto_b, True, self.now))
        self.emit(b, nb.add_peer(na.local_peer, proto_a, False, self.now))

    def random_graph(self, nodes: list[int], degree: int) -> None:
        for a in nodes:
            for b in self.rng.sample([x for x in nodes if x != a], degree):
                if (min(a, b), max(a, b)) not in self.links:
                    self.connect(a, b)

    def run_until(self, t: float) -> None:
        while self.queue and self.queue[0][0] <= t:
            when, _seq, dst, src, frame = heapq.heappop(self.queue)
            self.now = when
            node = self.nodes[dst]
            if src < 0:
                if dst in self.active:
                    self.emit(dst, node.heartbeat(self.now))
                    self._push(self.now + node.config.heartbeat_interval, dst, -1, b"")
                continue
            self.emit(dst, node.handle_frame(self.nodes[src].local_peer, frame, self.now))
        self.now = t

    def publish(self, i: int, data: bytes) -> bytes:
        msg_id, out = self.nodes[i].publish(TOPIC, data, self.now)
        self.emit(i, out)
        return msg_id

    def ids_delivered(self, i: int) -> Counter[bytes]:
        return Counter(d.msg_id for _t, d in self.delivered[i])

    def mesh_sizes(self, nodes: list[int]) -> list[int]:
        return [len(self.nodes[i].mesh_peers(TOPIC)) for i in nodes]


def build(n: int, seed: int, degree: int = 5, config: GossipConfig | None = None) -> Sim:
    sim = Sim(n, seed, config)
    for i in range(n):
        sim.start(i)
        sim.emit(i, sim.nodes[i].subscribe(TOPIC, 0.0))
    sim.random_graph(list(range(n)), degree)
    return sim


def test_thirty_nodes_deliver_exactly_once_and_meshes_converge() -> None:
    sim = build(30, seed=1)
    sim.run_until(5.0)
    everyone = list(range(30))
    assert all(PUBSUB_D_LO <= s <= PUBSUB_D_HI for s in sim.mesh_sizes(everyone))
    published: dict[bytes, int] = {}
    for k in range(100):
        src = sim.rng.randrange(30)
        published[sim.publish(src, b"msg %d" % k)] = src
        sim.run_until(sim.now + 0.02)
    sim.run_until(sim.now + 10.0)
    for i in everyone:
        got = sim.ids_delivered(i)
        expected = {m for m, src in published.items() if src != i}
        assert set(got) == expected, f"node {i}"
        assert all(n == 1 for n in got.values())
    sizes = sim.mesh_sizes(everyone)
    assert all(PUBSUB_D_LO <= s <= PUBSUB_D_HI for s in sizes), sizes
    for i in everyone:  # mesh links are symmetric once quiet
        for p in sim.nodes[i].mesh_peers(TOPIC):
            assert sim.nodes[i].local_peer in sim.nodes[sim.index[p]].mesh_peers(TOPIC)
    assert all(r.stats["invalid_signature"] == 0 for r in sim.nodes)


def test_run_is_deterministic() -> None:
    def run() -> list[int]:
        sim = build(12, seed=7)
        sim.run_until(3.0)
        for k in range(10):
            sim.publish(k % 12, b"%d" % k)
            sim.run_until(sim.now + 0.1)
        sim.run_until(sim.now + 5)
        return [r.stats["duplicate"] for r in sim.nodes]

    assert run() == run()


def test_late_joiner_gets_only_new_messages_and_recent_gossip() -> None:
    """A node connects at 20.3 s and subscribes (JOIN, GRAFTs to its peers) at t_join. Once every
    GRAFT has arrived (t_ready = t_join + 2 * max link latency) it is in its peers' meshes, so:
    (a) every message published at or after t_ready is delivered, exactly once;
    (b) messages published in [t_join, t_ready) are delivered at most once (a GRAFT may still be
        in flight, and gossip only goes to non-mesh peers);
    (c) no message published before t_join - horizon, horizon = (mcache_len + 1) * heartbeat
        + 0.5 s, is ever delivered: each peer drops a message from its mcache mcache_len
        heartbeats after receiving it (< 0.5 s after publication here) and the seen cache
        carries no content. Recent messages may arrive by IHAVE/IWANT, at most once."""
    cfg = GossipConfig()
    sim = build(16, seed=3)
    late = 16
    sim.nodes.append(make_router(999))
    sim.index[sim.nodes[late].local_peer] = late
    sim.delivered.append([])
    sim.run_until(3.0)
    old = [sim.publish(k % 16, b"old %d" % k) for k in range(10)]
    sim.run_until(20.0)
    recent = [sim.publish(k % 16, b"recent %d" % k) for k in range(5)]
    sim.run_until(20.3)
    sim.start(late)
    for peer in sim.rng.sample(range(16), 5):
        sim.connect(late, peer)
    sim.run_until(20.8)
    t_join = sim.now
    horizon = (cfg.mcache_len + 1) * cfg.heartbeat_interval + 0.5
    assert 3.0 < t_join - horizon < 20.0
    sim.emit(late, sim.nodes[late].subscribe(TOPIC, sim.now))
    assert sim.nodes[late].mesh_peers(TOPIC)  # JOIN grafted the peers it knows
    t_ready = t_join + 2 * 0.05
    early: list[bytes] = []
    ready: list[bytes] = []
    for k in range(30):
        (ready if sim.now >= t_ready else early).append(
            sim.publish(sim.rng.randrange(16), b"new %d" % k)
        )
        sim.run_until(sim.now + 0.02)
    sim.run_until(sim.now + 8)
    assert early and ready
    got = sim.ids_delivered(late)
    assert all(n == 1 for n in got.values())
    assert set(ready) <= set(got)
    assert set(got) <= set(early) | set(ready) | set(recent)
    assert not set(old) & set(got)
    assert PUBSUB_D_LO <= len(sim.nodes[late].mesh_peers(TOPIC)) <= PUBSUB_D_HI


def pair(
    cfg_a: GossipConfig | None = None, cfg_b: GossipConfig | None = None, proto: str = MESHSUB_V12
) -> tuple[GossipRouter, GossipRouter]:
    a, b = make_router(1, cfg_a), make_router(2, cfg_b)
    a.subscribe(TOPIC, 0.0)
    b.subscribe(TOPIC, 0.0)
    a.add_peer(b.local_peer, proto, True, 0.0)
    b.add_peer(a.local_peer, proto, False, 0.0)
    a.handle_rpc(b.local_peer, RPC(subscriptions=(SubOpts(True, TOPIC),)), 0.0)
    b.handle_rpc(a.local_peer, RPC(subscriptions=(SubOpts(True, TOPIC),)), 0.0)
    return a, b


def frame(rpc: RPC) -> bytes:
    return encode_rpc(rpc)


def sent_messages(out: Output) -> list[tuple[PeerId, Message]]:
    return [(p, m) for p, rpc in out.sends for m in rpc.publish]


def controls(out: Output, peer: PeerId) -> list[ControlMessage]:
    return [rpc.control for p, rpc in out.sends if p == peer and rpc.control is not None]


def test_invalid_signature_dropped_and_counted_then_graylisted() -> None:
    victim, attacker = pair()
    third = make_router(3)
    victim.add_peer(third.local_peer, MESHSUB_V12, True, 0.0)
    victim.handle_rpc(third.local_peer, RPC(subscriptions=(SubOpts(True, TOPIC),)), 0.0)
    victim.heartbeat(1.0)
    author = make_router(4)
    good = sign_message(author._key, TOPIC, b"real", 1)
    for k in range(7):
        bad = dataclasses.replace(good, data=b"forged %d" % k)
        out = victim.handle_frame(attacker.local_peer, frame(RPC(publish=(bad,))), 2.0)
        assert not out.delivered and not sent_messages(out)
    assert victim.stats["invalid_signature"] == 7
    assert victim.score(attacker.local_peer, 2.0) < victim.thresholds.graylist
    assert victim.score(third.local_peer, 2.0) >= 0
    # graylisted: even a valid message and a GRAFT from it are ignored
    rpc = RPC(publish=(good,), control=ControlMessage(graft=(Graft(TOPIC),)))
    out = victim.handle_frame(attacker.local_peer, frame(rpc), 2.0)
    assert not out.delivered and not out.sends
    assert victim.stats["graylisted_rpc"] == 1
    assert not victim.seen(good.from_peer + good.seqno)  # type: ignore[operator]
    # the forged copies did not poison the seen cache: the real message still gets through
    out = victim.handle_frame(third.local_peer, frame(RPC(publish=(good,))), 2.0)
    assert [d.data for d in out.delivered] == [b"real"]


def test_oversized_messages_dropped() -> None:
    a, b = pair(cfg_b=GossipConfig(max_message_size=1000))
    big = sign_message(a._key, TOPIC, b"x" * 2000, 1)
    out = b.handle_frame(a.local_peer, frame(RPC(publish=(big,))), 1.0)
    assert not out.delivered and b.stats["oversized"] == 1
    with pytest.raises(LimitExceeded):
        a.publish(TOPIC, b"x" * PUBSUB_MAX_MESSAGE, 1.0)
    huge = b"\x12" + b"\xff\xff\x7f" + b"\x00" * (PUBSUB_MAX_MESSAGE + 1)
    with pytest.raises(LimitExceeded):
        b.handle_frame(a.local_peer, huge, 1.0)
    assert b.stats["bad_frame"] == 1 and b.score(a.local_peer, 1.0) < 0
    # the largest message we allow still fits in one RPC frame
    max_data = GossipConfig().max_message_size - 200
    msg_id, out = a.publish(TOPIC, b"y" * max_data, 2.0)
    ((_peer, rpc),) = out.sends
    assert len(encode_rpc(rpc)) <= PUBSUB_MAX_MESSAGE
    c = make_router(9)
    c.subscribe(TOPIC, 0.0)
    c.add_peer(a.local_peer, MESHSUB_V12, False, 0.0)
    assert c.handle_frame(a.local_peer, encode_rpc(rpc), 2.0).delivered[0].msg_id == msg_id


def test_prune_backoff_respected() -> None:
    a, b = pair()
    a.heartbeat(1.0)
    b.heartbeat(1.0)
    assert b.local_peer in a.mesh_peers(TOPIC) or a.local_peer in b.mesh_peers(TOPIC)
    # a leaves: b receives PRUNE with the unsubscribe backoff and drops a from its mesh
    out = a.unsubscribe(TOPIC, 2.0)
    (ctl,) = controls(out, b.local_peer)
    assert ctl.prune[0].backoff == 10
    b.handle_frame(a.local_peer, frame(RPC(control=ctl)), 2.0)
    assert a.local_peer not in b.mesh_peers(TOPIC)
    assert b.backoff_until(TOPIC, a.local_peer) == 12.0
    # a rejoins right away: it may not graft b (its own backoff), nor may b graft a
    out = a.subscribe(TOPIC, 3.0)
    assert not any(c.graft for c in controls(out, b.local_peer))
    assert not any(c.graft for c in controls(b.heartbeat(4.0), a.local_peer))
    assert not any(c.graft for c in controls(a.heartbeat(4.0), b.local_peer))
    # a GRAFT inside the backoff is answered with PRUNE and penalized
    out = b.handle_frame(
        a.local_peer, frame(RPC(control=ControlMessage(graft=(Graft(TOPIC),)))), 5.0
    )
    assert a.local_peer not in b.mesh_peers(TOPIC)
    (ctl,) = controls(out, a.local_peer)
    assert ctl.prune and ctl.prune[0].topic == TOPIC
    assert b.stats["graft_in_backoff"] == 1 and b.score(a.local_peer, 5.0) < 0
    # after its backoff (plus one heartbeat of slack) a grafts b again
    assert any(c.graft for c in controls(a.heartbeat(14.0), b.local_peer))


def test_oversubscribed_mesh_pruned_to_d_with_px() -> None:
    hub = make_router(100)
    hub.subscribe(TOPIC, 0.0)
    others = [make_router(200 + i) for i in range(16)]
    refused = []
    for k, r in enumerate(others):
        hub.add_peer(r.local_peer, MESHSUB_V11, k >= 13, 0.0)
        rpc = RPC(
            subscriptions=(SubOpts(True, TOPIC),), control=ControlMessage(graft=(Graft(TOPIC),))
        )
        out = hub.handle_frame(r.local_peer, frame(rpc), 0.5)
        refused += [p for c in controls(out, r.local_peer) for p in c.prune]
    # inbound GRAFTs at D_hi are refused (with PX); outbound ones are still accepted
    assert len(refused) == 1 and refused[0].peers and refused[0].backoff == 60
    assert len(hub.mesh_peers(TOPIC)) == PUBSUB_D_HI + 3
    out = hub.heartbeat(1.0)
    mesh = hub.mesh_peers(TOPIC)
    assert len(mesh) == PUBSUB_D
    assert sum(r.local_peer in mesh for r in others[13:]) >= 2  # D_out outbound peers kept
    prunes = [p for r in others for c in controls(out, r.local_peer) for p in c.prune]
    assert len(prunes) == PUBSUB_D_HI + 3 - PUBSUB_D
    assert all(p.backoff == 60 and p.peers for p in prunes)
    assert all(len(p.peers) <= 16 for p in prunes)


def test_floodsub_and_v10_peers() -> None:
    hub = make_router(1)
    hub.subscribe(TOPIC, 0.0)
    flood, old, author = make_router(2), make_router(3), make_router(4)
    for r, proto in ((flood, FLOODSUB_ID), (old, MESHSUB_V10), (author, MESHSUB_V11)):
        hub.add_peer(r.local_peer, proto, True, 0.0)
        hub.handle_rpc(r.local_peer, RPC(subscriptions=(SubOpts(True, TOPIC),)), 0.0)
    out = hub.heartbeat(1.0)
    assert not controls(out, flood.local_peer)  # no GRAFT/IHAVE to floodsub peers
    assert flood.local_peer not in hub.mesh_peers(TOPIC)
    msg = sign_message(author._key, TOPIC, b"hello", 1)
    out = hub.handle_frame(author.local_peer, frame(RPC(publish=(msg,))), 1.5)
    targets = {p for p, _m in sent_messages(out)}
    assert targets == {flood.local_peer, old.local_peer}
    out = hub.unsubscribe(TOPIC, 2.0)
    (ctl,) = controls(out, old.local_peer)
    assert ctl.prune == (Prune(TOPIC),)  # v1.0: no PX, no backoff field


def test_validators_and_scores() -> None:
    a, b = pair()
    verdicts = {b"ok": Validation.ACCEPT, b"bad": Validation.REJECT, b"meh": Validation.IGNORE}
    b.set_validator(TOPIC, lambda src, m: verdicts[m.data or b""])
    for k, data in enumerate((b"ok", b"bad", b"meh")):
        msg = sign_message(a._key, TOPIC, data, k)
        out = b.handle_frame(a.local_peer, frame(RPC(publish=(msg,))), 1.0)
        assert [d.data for d in out.delivered] == ([b"ok"] if data == b"ok" else [])
    assert b.stats["rejected"] == 1 and b.stats["ignored"] == 1
    assert b.score(a.local_peer, 1.0) == pytest.approx(1.0 - 10.0)  # P2 once, P4 once
    b.set_validator(TOPIC, lambda src, m: 1 / 0)  # type: ignore[arg-type,return-value]
    out = b.handle_frame(
        a.local_peer, frame(RPC(publish=(sign_message(a._key, TOPIC, b"x", 9),))), 1.0
    )
    assert not out.delivered and b.stats["validator_error"] == 1


def test_ihave_iwant_limits_and_broken_promises() -> None:
    a, b = pair()
    msg_id, _ = a.publish(TOPIC, b"cached", 1.0)
    iwant = frame(RPC(control=ControlMessage(iwant=(IWant((msg_id,)),))))
    served = [len(sent_messages(a.handle_frame(b.local_peer, iwant, 1.0))) for _ in range(5)]
    assert served == [1, 1, 1, 0, 0]
    # b learns of ids via IHAVE: asks for unseen ones, at most 10 IHAVEs per heartbeat
    ihaves = tuple(IHave(TOPIC, (b"id%d" % k,)) for k in range(20))
    out = b.handle_frame(a.local_peer, frame(RPC(control=ControlMessage(ihave=ihaves))), 1.0)
    (ctl,) = controls(out, a.local_peer)
    assert len(ctl.iwant[0].message_ids) == 10
    assert b.stats["ihave_over_limit"] == 1
    # the advertised messages never arrive: one broken promise, penalized
    b.heartbeat(2.0)
    assert b.stats["broken_promise"] == 0
    b.heartbeat(4.5)
    assert b.stats["broken_promise"] == 1 and b.score(a.local_peer, 4.5) < 0
    # once the cache window has passed, IWANT answers nothing
    for t in range(5, 12):
        a.heartbeat(float(t))
    c = make_router(5)
    a.add_peer(c.local_peer, MESHSUB_V12, False, 12.0)
    assert not sent_messages(a.handle_frame(c.local_peer, iwant, 12.0))


def test_idontwant() -> None:
    hub = make_router(1)
    hub.subscribe(TOPIC, 0.0)
    peers = [make_router(10 + i) for i in range(3)]
    for r in peers:
        hub.add_peer(r.local_peer, MESHSUB_V12, True, 0.0)
        hub.handle_rpc(r.local_peer, RPC(subscriptions=(SubOpts(True, TOPIC),)), 0.0)
    hub.heartbeat(1.0)
    assert len(hub.mesh_peers(TOPIC)) == 3
    src, told, other = peers
    big = sign_message(src._key, TOPIC, b"z" * 2048, 1)
    mid = big.from_peer + big.seqno  # type: ignore[operator]
    dont = RPC(control=ControlMessage(idontwant=(IDontWant((mid,)),)))
    hub.handle_frame(told.local_peer, frame(dont), 1.1)
    out = hub.handle_frame(src.local_peer, frame(RPC(publish=(big,))), 1.2)
    assert {p for p, _m in sent_messages(out)} == {other.local_peer}
    assert hub.stats["idontwant_skipped"] == 1
    # the hub itself tells its other mesh peers it has the (large) message
    sent_dont = {p for p, rpc in out.sends if rpc.control and rpc.control.idontwant}
    assert sent_dont == {told.local_peer, other.local_peer}


def test_graft_for_unknown_topic_ignored_and_topic_cap() -> None:
    a, b = pair()
    out = a.handle_frame(
        b.local_peer, frame(RPC(control=ControlMessage(graft=(Graft("nope"),)))), 1.0
    )
    assert not out.sends and a.stats["graft_unknown_topic"] == 1
    subs = tuple(SubOpts(True, f"t{k}") for k in range(300))
    a.handle_frame(b.local_peer, frame(RPC(subscriptions=subs)), 1.0)
    assert len(a.peer_topics(b.local_peer)) == 256
    assert a.stats["peer_topics_over_limit"] == 300 - 255


def test_fanout_when_not_flood_publishing() -> None:
    cfg = GossipConfig(flood_publish=False)
    pub = make_router(1, cfg)
    subs = [make_router(10 + i) for i in range(8)]
    for r in subs:
        pub.add_peer(r.local_peer, MESHSUB_V11, True, 0.0)
        pub.handle_rpc(r.local_peer, RPC(subscriptions=(SubOpts(True, TOPIC),)), 0.0)
    _mid, out = pub.publish(TOPIC, b"x", 1.0)
    assert len(sent_messages(out)) == PUBSUB_D == len(pub.fanout_peers(TOPIC))
    out = pub.subscribe(TOPIC, 2.0)  # JOIN reuses the fanout peers
    assert len(pub.mesh_peers(TOPIC)) == PUBSUB_D and not pub.fanout_peers(TOPIC)
    flood = make_router(2)
    _mid, out = flood.publish(TOPIC, b"x", 1.0)
    assert not out.sends  # no peers


def test_unknown_peer_rpc_ignored() -> None:
    a = make_router(1)
    out = a.handle_rpc(make_router(2).local_peer, RPC(subscriptions=(SubOpts(True, TOPIC),)), 0.0)
    assert not out.sends and a.stats["rpc_from_unknown_peer"] == 1


def test_peer_score_components() -> None:
    from fileshare.protocols.pubsub import PeerScore, ScoreParams, TopicScoreParams

    tp = TopicScoreParams(
        time_in_mesh_weight=0.1,
        time_in_mesh_cap=10.0,
        first_message_deliveries_weight=1.0,
        first_message_deliveries_decay=0.5,
        first_message_deliveries_cap=3.0,
        mesh_message_deliveries_weight=-1.0,
        mesh_message_deliveries_threshold=4.0,
        mesh_message_deliveries_activation=5.0,
        mesh_message_deliveries_window=0.01,
        mesh_failure_penalty_weight=-2.0,
        mesh_failure_penalty_decay=0.5,
        invalid_message_deliveries_weight=-3.0,
        invalid_message_deliveries_decay=0.5,
    )
    s = PeerScore(ScoreParams(topics={TOPIC: tp}, default_topic=None))
    a, b = make_router(1).local_peer, make_router(2).local_peer
    s.add_peer(a)
    s.add_peer(b)
    s.refresh(0.0)
    s.graft(a, TOPIC, 0.0)
    assert s.score(a, 4.0) == pytest.approx(0.4)  # P1 only; P3 not active yet
    assert s.score(a, 100.0) == pytest.approx(1.0 - 16.0)  # P1 capped; P3 deficit 4 squared
    for k in range(5):  # P2 capped at 3; P3 counts first deliveries by a mesh peer
        s.validated(a, b"m%d" % k, TOPIC, 6.0)
    assert s.score(a, 6.0) == pytest.approx(0.6 + 3.0)  # deficit gone
    s.validated(b, b"x", TOPIC, 7.0)
    s.duplicate(a, b"x", 7.005)  # near-first delivery from a mesh peer: P3 credit, no P2
    s.duplicate(a, b"x", 7.005)  # counted once per peer
    assert s.score(b, 7.0) == pytest.approx(1.0)
    s.refresh(8.0)  # decay: 8 intervals since 0
    p2 = 3.0 * 0.5**8
    deficit = 4.0 - 6.0 * 0.9**8  # 5 first + 1 near-first mesh deliveries, decayed
    assert s.score(a, 8.0) == pytest.approx(0.8 + p2 - deficit**2)
    s.prune(a, TOPIC, 8.0)  # pruned with a deficit: it becomes sticky P3b (no more P1/P3)
    assert s.score(a, 8.0) == pytest.approx(p2 - 2.0 * deficit**2)
    s.rejected(b, b"bad", TOPIC, 9.0)
    s.duplicate(a, b"bad", 9.0)  # forwarding a known-invalid message is P4 too
    assert s.score(b, 9.0) == pytest.approx(-3.0)
    s.add_penalty(b, 2.0)
    assert s.score(b, 9.0) == pytest.approx(-3.0 - 40.0)  # P7: -10 * 2^2
    s.remove_peer(b, 9.0)  # negative scores are retained across reconnects
    s.add_peer(b)
    assert s.score(b, 9.0) < 0
    s.remove_peer(b, 9.0)
    s.refresh(9.0 + 601.0)
    s.add_peer(b)
    assert s.score(b, 610.0) == 0.0


def test_thresholds_validated() -> None:
    from fileshare.protocols.pubsub import ScoreThresholds

    with pytest.raises(ValueError):
        ScoreThresholds(gossip=-10, publish=-5, graylist=-20)
    with pytest.raises(ValueError):
        GossipConfig(d=6, d_lo=4, d_hi=12, d_out=4)
