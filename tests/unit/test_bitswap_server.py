"""The sans-io bitswap decision engine: what a server sends for a peer's wantlist."""

from __future__ import annotations

import pytest

from fileshare.content.cid import CID, RAW
from fileshare.limits import BITSWAP_MAX_MESSAGE, KIB, MIB
from fileshare.protocols.bitswap import (
    PROTOCOL_1_0_0,
    PROTOCOL_1_1_0,
    BlockPresence,
    DecisionEngine,
    Message,
    PresenceType,
    Response,
    WantEntry,
    Wantlist,
    WantType,
    decode_message,
)

HAVE, DONT_HAVE = PresenceType.HAVE, PresenceType.DONT_HAVE


class Store:
    """A StoreView over a dict, counting lookups so tests can see nothing is loaded early."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}

    def put(self, data: bytes) -> CID:
        cid = CID.from_data(RAW, data)
        self.blocks[cid.multihash] = data
        return cid

    def has(self, cid: CID) -> bool:
        return cid.multihash in self.blocks

    def size(self, cid: CID) -> int | None:
        data = self.blocks.get(cid.multihash)
        return None if data is None else len(data)

    def get(self, cid: CID) -> bytes | None:
        return self.blocks.get(cid.multihash)


def wants(*entries: WantEntry, full: bool = False) -> Message:
    return Message(wantlist=Wantlist(entries, full))


def drain(engine: DecisionEngine[str], store: Store, peer: str = "a") -> list[Message]:
    """Every message the engine has for ``peer``, encoded and decoded as on the wire."""
    out: list[Message] = []
    for _ in range(1000):
        resp = engine.next_response(peer)
        if resp is None:
            return out
        raw = resp.encode([store.get(c) for c in resp.cids])
        assert len(raw) <= BITSWAP_MAX_MESSAGE
        out.append(decode_message(raw))
    raise AssertionError("engine never ran out of work")


def sent_cids(msgs: list[Message]) -> list[CID]:
    return [p.cid() for m in msgs for p in m.all_payloads()]


def presences(msgs: list[Message]) -> list[BlockPresence]:
    return [bp for m in msgs for bp in m.presences]


@pytest.fixture
def store() -> Store:
    return Store()


def test_want_have_and_dont_have(store: Store) -> None:
    held = store.put(b"held")
    missing = CID.from_data(RAW, b"missing")
    quiet = CID.from_data(RAW, b"quiet")
    engine: DecisionEngine[str] = DecisionEngine(store)
    assert engine.receive(
        "a",
        wants(
            WantEntry(held, want_type=WantType.HAVE, send_dont_have=True),
            WantEntry(missing, want_type=WantType.HAVE, send_dont_have=True),
            WantEntry(quiet, want_type=WantType.HAVE),
        ),
    )
    msgs = drain(engine, store)
    assert presences(msgs) == [BlockPresence(held, HAVE), BlockPresence(missing, DONT_HAVE)]
    assert sent_cids(msgs) == []
    # HAVE answered -> removed; unanswerable wants stay parked
    ledger = engine.ledger("a")
    assert ledger is not None and set(ledger.wants) == {missing, quiet}
    assert drain(engine, store) == []


def test_want_block_sends_block_or_dont_have(store: Store) -> None:
    held = store.put(b"held")
    missing = CID.from_data(RAW, b"later")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("a", wants(WantEntry(held), WantEntry(missing, send_dont_have=True)))
    msgs = drain(engine, store)
    assert sent_cids(msgs) == [held]
    assert presences(msgs) == [BlockPresence(missing, DONT_HAVE)]
    # the block arrives later: the parked want is served without a new request
    assert store.put(b"later") == missing
    assert engine.block_added(missing) == ["a"]
    assert sent_cids(drain(engine, store)) == [missing]
    assert engine.block_added(missing) == []


def test_dont_have_only_when_asked_and_only_on_1_2(store: Store) -> None:
    missing = CID.from_data(RAW, b"nope")
    engine: DecisionEngine[str] = DecisionEngine(store)
    assert not engine.receive("a", wants(WantEntry(missing)))
    assert not engine.receive("b", wants(WantEntry(missing, send_dont_have=True)), PROTOCOL_1_1_0)
    assert drain(engine, store, "a") == drain(engine, store, "b") == []


def test_cancel_removes_queued_block(store: Store) -> None:
    a, b = store.put(b"a"), store.put(b"b")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("p", wants(WantEntry(a), WantEntry(b)))
    engine.receive("p", wants(WantEntry(a, cancel=True)))
    assert sent_cids(drain(engine, store, "p")) == [b]
    ledger = engine.ledger("p")
    assert ledger is not None and not ledger.wants and ledger.blocks_sent == 1


def test_full_wantlist_replaces(store: Store) -> None:
    a, b = store.put(b"a"), store.put(b"b")
    gone = CID.from_data(RAW, b"gone")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("p", wants(WantEntry(a), WantEntry(gone, send_dont_have=True)))
    engine.receive("p", wants(WantEntry(b), full=True))
    msgs = drain(engine, store, "p")
    assert sent_cids(msgs) == [b] and presences(msgs) == []


def test_priority_order_and_fifo_ties(store: Store) -> None:
    cids = [store.put(bytes([i]) * 10) for i in range(6)]
    prios = [1, 5, 3, 5, 9, 1]
    engine: DecisionEngine[str] = DecisionEngine(store, target_bytes=10 * KIB)
    engine.receive("p", wants(*(WantEntry(c, pr) for c, pr in zip(cids, prios, strict=True))))
    assert sent_cids(drain(engine, store, "p")) == [cids[i] for i in (4, 1, 3, 2, 0, 5)]


def test_want_have_then_block_upgrades_never_downgrades(store: Store) -> None:
    a, b = store.put(b"a"), store.put(b"b")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("p", wants(WantEntry(a, want_type=WantType.HAVE)))
    engine.receive("p", wants(WantEntry(a)))
    engine.receive("p", wants(WantEntry(b)))
    engine.receive("p", wants(WantEntry(b, want_type=WantType.HAVE)))
    msgs = drain(engine, store, "p")
    assert sorted(sent_cids(msgs)) == sorted([a, b]) and presences(msgs) == []


def test_budget_splits_blocks_across_messages(store: Store) -> None:
    cids = [store.put(bytes([i]) * (300 * KIB)) for i in range(10)]
    engine: DecisionEngine[str] = DecisionEngine(store, target_bytes=1 * MIB)
    engine.receive("p", wants(*(WantEntry(c, 100 - i) for i, c in enumerate(cids))))
    sizes = []
    pending = []
    counts = []
    for _ in range(10):
        resp = engine.next_response("p")
        if resp is None:
            break
        raw = resp.encode([store.get(c) for c in resp.cids])
        sizes.append(len(raw))
        pending.append(decode_message(raw).pending_bytes)
        counts.append(len(resp.blocks))
    assert counts == [3, 3, 3, 1] and all(s <= 1 * MIB for s in sizes)
    assert pending == [7 * 300 * KIB, 4 * 300 * KIB, 1 * 300 * KIB, 0]


def test_oversized_block_goes_alone_within_hard_limit(store: Store) -> None:
    big = [store.put(bytes([i]) * (2 * MIB)) for i in range(2)]
    small = store.put(b"small")
    engine: DecisionEngine[str] = DecisionEngine(store, target_bytes=64 * KIB)
    engine.receive("p", wants(*(WantEntry(c, 10) for c in big), WantEntry(small, 1)))
    msgs = drain(engine, store, "p")
    assert [len(m.payload) for m in msgs] == [1, 1, 1]
    assert sent_cids(msgs) == [*big, small]


def test_engine_loads_nothing_itself_and_tolerates_vanished_blocks(store: Store) -> None:
    a = store.put(b"a")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("p", wants(WantEntry(a, send_dont_have=True)))
    resp = engine.next_response("p")
    assert isinstance(resp, Response) and resp.cids == [a]
    msg = decode_message(resp.encode([None]))  # deleted between planning and loading
    assert msg.presences == (BlockPresence(a, DONT_HAVE),) and not msg.payload


def test_legacy_1_0_peer_gets_blocks_field(store: Store) -> None:
    data = b"\x0a\x02\x08\x02"
    cid = CID.from_data(0x70, data, 0x12).to_v1()
    v0 = CID(0, 0x70, cid.multihash)
    store.blocks[cid.multihash] = data
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("old", wants(WantEntry(v0)), PROTOCOL_1_0_0)
    msgs = drain(engine, store, "old")
    assert msgs[0].blocks == (data,) and not msgs[0].payload
    assert sent_cids(msgs) == [v0]


def test_wants_beyond_cap_are_ignored(store: Store) -> None:
    cids = [store.put(bytes([i])) for i in range(5)]
    engine: DecisionEngine[str] = DecisionEngine(store, max_wants_per_peer=3)
    engine.receive("p", wants(*(WantEntry(c) for c in cids)))
    ledger = engine.ledger("p")
    assert ledger is not None and ledger.wants_dropped == 2
    assert sent_cids(drain(engine, store, "p")) == cids[:3]


def test_peers_are_independent_and_disconnect_forgets(store: Store) -> None:
    a = store.put(b"a")
    missing = CID.from_data(RAW, b"m")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("x", wants(WantEntry(a), WantEntry(missing)))
    engine.receive("y", wants(WantEntry(missing)))
    assert engine.peers_with_work() == ["x"]
    engine.peer_disconnected("x")
    assert engine.next_response("x") is None
    store.put(b"m")
    assert engine.block_added(missing) == ["y"]


def test_renewed_want_after_dont_have_is_answered_again(store: Store) -> None:
    missing = CID.from_data(RAW, b"m")
    engine: DecisionEngine[str] = DecisionEngine(store)
    entry = WantEntry(missing, want_type=WantType.HAVE, send_dont_have=True)
    engine.receive("p", wants(entry))
    assert presences(drain(engine, store, "p")) == [BlockPresence(missing, DONT_HAVE)]
    engine.receive("p", wants(entry))
    assert presences(drain(engine, store, "p")) == [BlockPresence(missing, DONT_HAVE)]
    store.put(b"m")
    engine.block_added(missing)
    assert presences(drain(engine, store, "p")) == [BlockPresence(missing, HAVE)]


def test_block_arriving_before_dont_have_is_sent_suppresses_it(store: Store) -> None:
    missing = CID.from_data(RAW, b"m")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("p", wants(WantEntry(missing, send_dont_have=True)))
    store.put(b"m")
    engine.block_added(missing)
    msgs = drain(engine, store, "p")
    assert presences(msgs) == [] and sent_cids(msgs) == [missing]


def test_accounting(store: Store) -> None:
    a = store.put(b"abc")
    engine: DecisionEngine[str] = DecisionEngine(store)
    engine.receive("p", Message(wantlist=Wantlist((WantEntry(a),)), blocks=(b"xy",)))
    drain(engine, store, "p")
    ledger = engine.ledger("p")
    assert ledger is not None
    assert (ledger.blocks_sent, ledger.bytes_sent) == (1, 3)
    assert (ledger.blocks_received, ledger.bytes_received, ledger.messages_received) == (1, 2, 1)
