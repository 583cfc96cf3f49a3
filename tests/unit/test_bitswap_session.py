"""The sans-io fetch session: scheduling, verification, penalties, resume, and a multi-peer simulation."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from fileshare.content.builder import Block, build_dag, chunk_bytes
from fileshare.content.cid import CID, DAG_PB, RAW
from fileshare.content.layout import Layout
from fileshare.content.reader import read_file
from fileshare.limits import KIB, MAX_BLOCK_SIZE
from fileshare.protocols.bitswap import (
    BlockPresence,
    CheckLocal,
    DecisionEngine,
    Message,
    Payload,
    PeerDropped,
    Prefix,
    PresenceType,
    SendWants,
    Session,
    SessionConfig,
    StoreBlock,
    WantType,
    decode_message,
)

LAYOUT = Layout(chunk_size=8 * KIB, max_links=32)


def make_dag(
    size: int, seed: int = 1, layout: Layout = LAYOUT
) -> tuple[CID, dict[bytes, Block], bytes]:
    data = random.Random(seed).randbytes(size)
    root, blocks = build_dag(chunk_bytes(data, layout.chunk_size), layout)
    return root, {b.cid.multihash: b for b in blocks}, data


class Store:
    """StoreView over a dict of blocks keyed by multihash."""

    def __init__(self, blocks: Iterable[Block] = (), corrupt: bool = False) -> None:
        self.blocks: dict[bytes, bytes] = {}
        for b in blocks:
            self.blocks[b.cid.multihash] = (b"\xff" + b.data[1:]) if corrupt else b.data

    def has(self, cid: CID) -> bool:
        return cid.multihash in self.blocks

    def size(self, cid: CID) -> int | None:
        d = self.blocks.get(cid.multihash)
        return None if d is None else len(d)


def actions_of(session: Session[str], now: float, local: Store | None = None) -> list[object]:
    """Poll until quiet, answering CheckLocal from ``local`` (or as missing)."""
    out: list[object] = []
    for _ in range(100):
        acts = session.poll(now)
        if not acts:
            return out
        for a in acts:
            if isinstance(a, CheckLocal):
                for cid in a.cids:
                    data = local.blocks.get(cid.multihash) if local else None
                    session.local_result(cid, data is not None, data)
        out += acts
    raise AssertionError("session never went quiet")


def wanted(acts: list[object], peer: str, want_type: WantType = WantType.BLOCK) -> list[CID]:
    return [
        e.cid
        for a in acts
        if isinstance(a, SendWants) and a.peer == peer
        for e in a.entries
        if not e.cancel and e.want_type == want_type
    ]


def cancelled(acts: list[object], peer: str) -> list[CID]:
    return [e.cid for a in acts if isinstance(a, SendWants) and a.peer == peer
            for e in a.entries if e.cancel]  # fmt: skip


def blocks_msg(*blocks: Block) -> Message:
    return Message(payload=tuple(Payload.of(b.cid, b.data) for b in blocks))


# --- small deterministic scenarios ---


def serve(
    s: Session[str], blocks: dict[bytes, Block], local: Store | None = None, peer: str = "a"
) -> tuple[list[CID], dict[bytes, bytes]]:
    """Answer every want-block ``peer`` gets until the session is done; return (asked, stored)."""
    asked: list[CID] = []
    stored: dict[bytes, bytes] = {}
    now = 0.0
    acts = actions_of(s, now, local)
    for _ in range(200):
        for a in acts:
            if isinstance(a, StoreBlock):
                a.cid.verify(a.data)
                stored[a.cid.multihash] = a.data
        cids = wanted(acts, peer)
        if not cids:
            break
        asked += cids
        now += 0.01
        s.on_message(peer, blocks_msg(*(blocks[c.multihash] for c in cids)), now)
        acts = actions_of(s, now, local)
    return asked, stored


def test_single_peer_fetch_and_verified_store() -> None:
    root, blocks, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    asked, stored = serve(s, blocks)
    assert s.done and stored.keys() == blocks.keys() and len(asked) == len(blocks)
    p = s.progress()
    assert p.blocks_done == len(blocks) and p.file_size == 40 * KIB
    assert p.file_bytes_done == 40 * KIB and p.duplicate_bytes == 0


def test_resume_fetches_only_missing_blocks() -> None:
    root, blocks, _ = make_dag(100 * KIB)
    leaves = [b for b in blocks.values() if b.cid.codec == RAW]
    local = Store([b for b in blocks.values() if b.cid.codec == DAG_PB] + leaves[::2])
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    asked, stored = serve(s, blocks, local)
    assert s.done
    assert {c.multihash for c in asked} == {b.cid.multihash for b in leaves[1::2]}
    assert stored.keys() == {c.multihash for c in asked}
    assert s.progress().blocks_local == len(blocks) - len(asked)


def test_corrupt_local_inner_node_is_refetched() -> None:
    root, blocks, _ = make_dag(40 * KIB)
    local = Store([blocks[root.multihash]], corrupt=True)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    assert wanted(actions_of(s, 0.0, local), "a") == [root]


def test_corrupt_block_penalised_and_fetched_elsewhere() -> None:
    root, blocks, _ = make_dag(40 * KIB)
    cfg = SessionConfig(max_bad_blocks=2)
    s: Session[str] = Session(root, config=cfg)
    s.add_peer("bad", 0.0, has_blocks=True)
    acts = actions_of(s, 0.0)
    assert wanted(acts, "bad") == [root]
    s.add_peer("good", 0.0, has_blocks=True)
    rb = blocks[root.multihash]
    s.on_message("bad", Message(payload=(Payload.of(root, rb.data + b"x"),)), 0.1)
    acts = actions_of(s, 0.1)
    assert wanted(acts, "good") == [root] and cancelled(acts, "bad") == [root]
    assert s.progress().bad_blocks == 1 and not any(isinstance(a, StoreBlock) for a in acts)
    s.on_message("bad", Message(payload=(Payload.of(root, b"junk"),)), 0.2)
    acts = actions_of(s, 0.2)
    assert [a for a in acts if isinstance(a, PeerDropped)] == [
        PeerDropped("bad", "sent 2 bad blocks")
    ]
    s.add_peer("bad", 0.3, has_blocks=True)  # banned for this session
    assert "bad" not in s.peer_stats()


def test_oversized_and_unhashable_blocks_count_as_bad() -> None:
    root, _, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    actions_of(s, 0.0)
    big = b"\0" * (MAX_BLOCK_SIZE + 1)
    s.on_verified_block("a", CID.from_data(RAW, big), big, 0.1)
    sha512 = Prefix(1, RAW, 0x13, 64)  # a hash we cannot verify
    s.on_message("a", Message(payload=(Payload(sha512, b"x"),)), 0.1)
    assert s.progress().bad_blocks == 2


def test_dont_have_moves_block_to_another_peer() -> None:
    root, _, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    assert wanted(actions_of(s, 0.0), "a") == [root]
    s.add_peer("b", 0.0, has_blocks=True)
    s.on_message("a", Message(presences=(BlockPresence(root, PresenceType.DONT_HAVE),)), 0.1)
    acts = actions_of(s, 0.1)
    assert wanted(acts, "b") == [root] and wanted(acts, "a") == []


def test_stalled_blocks_wait_for_a_new_peer() -> None:
    root, _, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    actions_of(s, 0.0)
    s.on_message("a", Message(presences=(BlockPresence(root, PresenceType.DONT_HAVE),)), 0.1)
    assert wanted(actions_of(s, 0.1), "a") == [] and s.needs_peers
    s.add_peer("b", 0.2, has_blocks=True)
    assert wanted(actions_of(s, 0.2), "b") == [root]


def test_disconnect_requeues_outstanding_wants() -> None:
    root, _, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    assert wanted(actions_of(s, 0.0), "a") == [root]
    s.remove_peer("a", 0.1)
    assert s.needs_peers
    s.add_peer("b", 0.1, has_blocks=True)
    assert wanted(actions_of(s, 0.1), "b") == [root]


def test_silent_peer_strikes_then_dropped() -> None:
    root, _, _ = make_dag(40 * KIB)
    cfg = SessionConfig(idle_timeout=1.0, max_strikes=2)
    s: Session[str] = Session(root, config=cfg)
    s.add_peer("mute", 0.0, has_blocks=True)
    assert wanted(actions_of(s, 0.0), "mute") == [root]
    assert s.next_deadline() == 1.0
    s.add_peer("b", 0.5, has_blocks=True)
    acts = actions_of(s, 1.0)
    assert cancelled(acts, "mute") == [root] and wanted(acts, "b") == [root]
    assert s.peer_stats()["mute"].strikes == 1


def test_want_have_discovery_for_unknown_peers() -> None:
    root, _, _ = make_dag(40 * KIB)
    cfg = SessionConfig(probe_interval=2.0)
    s: Session[str] = Session(root, config=cfg)
    s.add_peer("u", 0.0)
    acts = actions_of(s, 0.0)
    probes = [e for a in acts if isinstance(a, SendWants) for e in a.entries]
    assert [(e.cid, e.want_type, e.send_dont_have) for e in probes] == [(root, WantType.HAVE, True)]
    assert wanted(acts, "u") == [] and s.next_deadline() == 2.0
    s.on_message("u", Message(presences=(BlockPresence(root, PresenceType.HAVE),)), 0.1)
    assert wanted(actions_of(s, 0.1), "u") == [root]


def test_unknown_peer_that_lacks_content_is_reprobed_not_asked() -> None:
    root, _, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root, config=SessionConfig(probe_interval=1.0))
    s.add_peer("u", 0.0)
    actions_of(s, 0.0)
    s.on_message("u", Message(presences=(BlockPresence(root, PresenceType.DONT_HAVE),)), 0.1)
    acts = actions_of(s, 0.1)
    assert cancelled(acts, "u") == [root]  # the server would otherwise park the want
    assert wanted(actions_of(s, 1.5), "u", WantType.HAVE) == []  # it said it lacks the root


def test_repeated_blocks_in_dag_fetched_once() -> None:
    layout = Layout(chunk_size=1 * KIB, max_links=8)
    data = b"\0" * (64 * KIB)
    root, blocks_list = build_dag(chunk_bytes(data, 1 * KIB), layout)
    blocks = {b.cid.multihash: b for b in blocks_list}
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    requested, _ = serve(s, blocks)
    assert s.done and len(requested) == len(set(requested)) == len(blocks)


def test_malformed_dag_fails_the_session() -> None:
    bogus = b"\x0a\x03\x08\x02\x18"  # hashes fine, but not a valid UnixFS node
    root = CID.from_data(DAG_PB, bogus)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    actions_of(s, 0.0)
    s.on_message("a", Message(payload=(Payload.of(root, bogus),)), 0.1)
    actions_of(s, 0.1)
    assert s.error is not None and not s.done and s.next_deadline() is None


def test_unrequested_block_is_bad_duplicate_is_not() -> None:
    root, blocks, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    actions_of(s, 0.0)
    rb = blocks[root.multihash]
    s.on_message("a", blocks_msg(rb), 0.1)
    s.on_message("a", blocks_msg(rb), 0.2)
    stray = Block(CID.from_data(RAW, b"stray"), b"stray")
    s.on_message("a", blocks_msg(stray), 0.2)
    p = s.progress()
    assert p.duplicate_blocks == 1 and p.duplicate_bytes == len(rb.data) and p.bad_blocks == 1


# --- simulation ---


@dataclass
class SimPeer:
    name: str
    bandwidth: float  # bytes/s
    store: Store
    latency: float = 0.005
    silent: bool = False
    vanish_at: float | None = None
    known: bool = True  # a known provider (else discovered by want-have)
    engine: DecisionEngine[str] = field(init=False)
    busy: bool = False
    gone: bool = False

    def __post_init__(self) -> None:
        self.engine = DecisionEngine(self.store, target_bytes=64 * KIB)


@dataclass
class SimResult:
    session: Session[str]
    stored: dict[bytes, bytes]
    dropped: dict[str, str]
    bytes_from: dict[str, int]
    time: float


def simulate(
    root: CID, peers: list[SimPeer], cfg: SessionConfig, limit: float = 120.0
) -> SimResult:
    session: Session[str] = Session(root, config=cfg)
    by_name = {p.name: p for p in peers}
    events: list[tuple[float, int, str, str, bytes]] = []
    seq = 0
    stored: dict[bytes, bytes] = {}
    dropped: dict[str, str] = {}
    bytes_from = {p.name: 0 for p in peers}
    wakes: set[float] = set()

    def push(t: float, kind: str, name: str = "", raw: bytes = b"") -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, name, raw))

    def run_session(now: float) -> None:
        for _ in range(100):
            acts = session.poll(now)
            if not acts:
                break
            for a in acts:
                if isinstance(a, SendWants):
                    push(now + by_name[a.peer].latency, "to_peer", a.peer, a.message().encode())
                elif isinstance(a, StoreBlock):
                    a.cid.verify(a.data)
                    assert a.cid.multihash not in stored
                    stored[a.cid.multihash] = a.data
                elif isinstance(a, CheckLocal):
                    for cid in a.cids:
                        session.local_result(cid, False)
                elif isinstance(a, PeerDropped):
                    dropped[a.peer] = a.reason
        deadline = session.next_deadline()
        if deadline is not None and deadline not in wakes:
            wakes.add(deadline)
            push(max(deadline, now), "wake")

    for p in peers:
        session.add_peer(p.name, 0.0, has_blocks=p.known)
        if p.vanish_at is not None:
            push(p.vanish_at, "vanish", p.name)
    run_session(0.0)
    now = 0.0
    for _ in range(200_000):
        if session.done or session.error is not None or not events:
            break
        now, _, kind, name, raw = heapq.heappop(events)
        assert now < limit, "simulation ran out of time"
        peer = by_name.get(name)
        if kind == "to_peer" and peer is not None and not peer.gone:
            if peer.engine.receive("client", decode_message(raw)) and not peer.silent:
                push(now, "serve", name)
        elif kind == "serve" and peer is not None and not peer.gone and not peer.busy:
            resp = peer.engine.next_response("client")
            if resp is not None:
                out = resp.encode([peer.store.blocks.get(c.multihash) for c in resp.cids])
                tx = len(out) / peer.bandwidth
                peer.busy = True
                push(now + tx + peer.latency, "to_client", name, out)
                push(now + tx, "idle", name)
        elif kind == "idle" and peer is not None:
            peer.busy = False
            push(now, "serve", name)
        elif kind == "to_client" and peer is not None and not peer.gone:
            msg = decode_message(raw)
            bytes_from[name] += sum(len(p.data) for p in msg.payload)
            session.on_message(name, msg, now)
            run_session(now)
        elif kind == "vanish" and peer is not None:
            peer.gone = True
            session.remove_peer(name, now)
            run_session(now)
        elif kind == "wake":
            run_session(now)
    return SimResult(session, stored, dropped, bytes_from, now)


async def reassemble(root: CID, stored: dict[bytes, bytes]) -> bytes:
    async def get(cid: CID) -> bytes:
        return stored[cid.multihash]

    return b"".join([chunk async for chunk in read_file(root, get)])


async def test_simulated_multi_peer_fetch_with_faulty_peers() -> None:
    size = 8 * 1024 * KIB
    root, blocks, data = make_dag(size, seed=7)
    honest = Store(blocks.values())
    bws = {"h1": 250e3, "h2": 500e3, "h3": 750e3, "h4": 1000e3}
    peers = [
        SimPeer("h1", bws["h1"], honest),
        SimPeer("h2", bws["h2"], honest, known=False),
        SimPeer("h3", bws["h3"], honest),
        SimPeer("h4", bws["h4"], honest, known=False),
        SimPeer("corrupt", 1000e3, Store(blocks.values(), corrupt=True)),
        SimPeer("vanisher", 800e3, honest, vanish_at=1.0),
        SimPeer("mute", 1000e3, honest, silent=True),
    ]
    cfg = SessionConfig(idle_timeout=0.5, probe_interval=0.2, queue_target=0.25)
    res = simulate(root, peers, cfg)
    s = res.session
    assert s.done and s.error is None
    assert res.stored.keys() == blocks.keys()  # every block arrived, each verified on arrival
    assert await reassemble(root, res.stored) == data
    assert "corrupt" in res.dropped and "bad blocks" in res.dropped["corrupt"]
    assert "mute" in res.dropped
    prog = s.progress()
    assert prog.duplicate_bytes < size // 100
    assert prog.endgame_duplicate_bytes < size // 50
    assert prog.blocks_done == len(blocks) and prog.file_bytes_done == size
    # throughput share of the honest peers follows their bandwidth
    total = sum(res.bytes_from[n] for n in bws)
    for name, bw in bws.items():
        share, expect = res.bytes_from[name] / total, bw / sum(bws.values())
        assert abs(share - expect) < 0.15 * expect, (name, share, expect)
    assert res.bytes_from["vanisher"] > 0
    # close to the ideal time: all honest bandwidth used, the vanisher's until it leaves at 1 s
    ideal = 1.0 + (size - 1.0 * (sum(bws.values()) + 800e3)) / sum(bws.values())
    assert res.time < ideal * 1.15, (res.time, ideal)


def test_end_game_copies_tail_blocks_from_slow_peer() -> None:
    size = 512 * KIB
    root, blocks, _ = make_dag(size, seed=3)
    honest = Store(blocks.values())

    def run(copies: int) -> SimResult:
        peers = [SimPeer("slow", 20e3, honest), SimPeer("fast", 2000e3, honest)]
        return simulate(root, peers, SessionConfig(max_copies=copies))

    with_copies, without = run(2), run(1)
    assert with_copies.session.done and without.session.done
    assert with_copies.session.progress().duplicate_bytes == 0
    assert with_copies.time < size / 2000e3 * 1.5 < without.time / 2


def test_end_game_copy_is_cancelled_when_the_block_arrives() -> None:
    root, blocks, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("a", 0.0, has_blocks=True)
    assert wanted(actions_of(s, 0.0), "a") == [root]
    s.add_peer("b", 0.0, has_blocks=True)
    # "a" has not delivered anything yet, so an idle "b" is asked for a copy of the root
    assert wanted(actions_of(s, 0.1), "b") == [root]
    s.on_message("b", blocks_msg(blocks[root.multihash]), 0.2)
    acts = actions_of(s, 0.2)
    assert cancelled(acts, "a") == [root]
    s.on_message("a", blocks_msg(blocks[root.multihash]), 0.3)  # crossed the cancel
    p = s.progress()
    assert p.duplicate_bytes == 0 and p.endgame_duplicate_bytes == len(blocks[root.multihash].data)


def test_deadline_never_in_the_past_when_idle() -> None:
    root, _, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root, config=SessionConfig(idle_timeout=5.0, probe_interval=1.0))
    s.add_peer("a", 0.0, has_blocks=True)
    s.add_peer("u", 0.0)
    actions_of(s, 0.0)
    s.on_message("u", Message(presences=(BlockPresence(root, PresenceType.DONT_HAVE),)), 0.1)
    actions_of(s, 2.0)
    deadline = s.next_deadline()
    assert deadline is not None and deadline > 2.0


def test_peer_without_want_have_support_is_asked_directly() -> None:
    root, _, _ = make_dag(40 * KIB)
    s: Session[str] = Session(root)
    s.add_peer("old", 0.0, supports_have=False)
    acts = actions_of(s, 0.0)
    entries = [e for a in acts if isinstance(a, SendWants) for e in a.entries]
    assert [(e.cid, e.want_type, e.send_dont_have) for e in entries] == [
        (root, WantType.BLOCK, False)
    ]


async def test_silent_peer_does_not_hold_up_the_fetch() -> None:
    size = 1024 * KIB
    root, blocks, data = make_dag(size, seed=11)
    honest = Store(blocks.values())
    cfg = SessionConfig()
    peers = [SimPeer("mute", 2000e3, honest, silent=True), SimPeer("honest", 2000e3, honest)]
    res = simulate(root, peers, cfg)
    assert res.session.done and res.session.error is None
    assert await reassemble(root, res.stored) == data
    assert res.bytes_from["mute"] == 0
    # the silent peer's wants go elsewhere before its idle timeout would even expire
    assert res.time < cfg.idle_timeout, (res.time, cfg.idle_timeout)
