"""Kademlia routing table, iterative lookup state machine and provider store (all sans-io)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.limits import KAD_PROVIDER_ADDR_TTL, KAD_PROVIDER_TTL
from fileshare.protocols.kad import (
    AddStatus,
    DiversityConfig,
    Lookup,
    Message,
    MessageType,
    Peer,
    ProviderStore,
    QueryState,
    Reprovider,
    RoutingTable,
    common_prefix_len,
    kad_key,
)


def pid(n: int) -> bytes:
    return b"\x12\x20" + n.to_bytes(32, "big")


def ip4(a: int, b: int, c: int = 0, d: int = 1) -> bytes:
    return bytes([0x04, a, b, c, d, 0x06, 0x0F, 0xA1])


ME = pid(0)
ME_KEY = kad_key(ME)


def in_bucket(bucket: int, count: int, start: int = 1) -> list[bytes]:
    """``count`` peer ids whose kad key shares exactly ``bucket`` leading bits with ME."""
    out: list[bytes] = []
    n = start
    while len(out) < count:
        if common_prefix_len(ME_KEY, kad_key(pid(n))) == bucket:
            out.append(pid(n))
        n += 1
    return out


# --- routing table: placement and closest ---


def test_bucket_placement() -> None:
    table = RoutingTable(ME)
    for b in (0, 1, 3):
        for p in in_bucket(b, 2):
            assert table.try_add(p, [], 0.0).status == AddStatus.ADDED
            assert table.bucket_index(kad_key(p)) == b
    assert table.bucket_sizes() == {0: 2, 1: 2, 3: 2}
    assert set(e.peer_id for e in table.bucket(3)) == set(in_bucket(3, 2))
    assert table.last_nonempty_bucket() == 3
    assert table.try_add(ME, [], 0.0).status == AddStatus.REJECTED_SELF
    assert table.try_add(pid(999_999), [], 0.0, server=False).status == AddStatus.REJECTED_CLIENT
    assert len(table) == 6


@given(st.integers(0, 2**32), st.integers(1, 40))
@settings(max_examples=50, deadline=None)
def test_closest_matches_brute_force(seed: int, n: int) -> None:
    rng = random.Random(seed)
    table = RoutingTable(ME, k=8)
    for _ in range(300):
        table.try_add(pid(rng.getrandbits(64) + 1), [], 0.0)
    target = kad_key(pid(rng.getrandbits(64)))
    expected = sorted(table.peers(), key=lambda e: e.key ^ target)[:n]
    assert [e.peer_id for e in table.closest(target, n)] == [e.peer_id for e in expected]
    ex = {e.peer_id for e in expected[:2]}
    assert not ex & {e.peer_id for e in table.closest(target, n, exclude=ex)}


def test_client_mode_peer_is_removed() -> None:
    table = RoutingTable(ME)
    p = in_bucket(0, 1)[0]
    table.try_add(p, [], 0.0)
    table.try_add(p, [], 1.0, server=False)
    assert p not in table


# --- eviction with liveness check ---


def full_bucket(k: int = 4) -> tuple[RoutingTable, list[bytes]]:
    table = RoutingTable(ME, k=k, liveness_grace=60.0)
    peers = in_bucket(0, k + 2)
    for i, p in enumerate(peers[:k]):
        assert table.try_add(p, [], float(i)).status == AddStatus.ADDED
    return table, peers


def test_full_bucket_asks_to_ping_least_recently_seen_and_keeps_it_if_alive() -> None:
    table, peers = full_bucket()
    table.seen(peers[0], 1.5)  # peers[1] is now the least recently seen
    res = table.try_add(peers[4], [], 100.0)
    assert res.status == AddStatus.PING_NEEDED and res.ping == peers[1]
    # a second newcomer while the check is pending is dropped
    assert table.try_add(peers[5], [], 100.0).status == AddStatus.BUCKET_FULL
    assert table.ping_result(peers[1], True, 101.0) == AddStatus.BUCKET_FULL
    assert peers[1] in table and peers[4] not in table
    assert table.bucket(0)[-1].peer_id == peers[1]  # now the most recently seen


def test_full_bucket_replaces_dead_peer() -> None:
    table, peers = full_bucket()
    res = table.try_add(peers[4], [], 100.0)
    assert res.ping == peers[0]
    assert table.ping_result(peers[0], False, 110.0) == AddStatus.ADDED
    assert peers[0] not in table and peers[4] in table and len(table) == 4


def test_full_bucket_keeps_recently_seen_peers_without_ping() -> None:
    table, peers = full_bucket()
    assert table.try_add(peers[4], [], 30.0).status == AddStatus.BUCKET_FULL


def test_stale_pending_check_is_replaced() -> None:
    table, peers = full_bucket()
    assert table.try_add(peers[4], [], 100.0).status == AddStatus.PING_NEEDED
    res = table.try_add(peers[5], [], 100.0 + table.ping_timeout + 1)
    assert res.status == AddStatus.PING_NEEDED
    assert table.ping_result(res.ping or b"", False, 200.0) == AddStatus.ADDED
    assert peers[5] in table


# --- IP diversity ---


def test_ip_diversity_per_bucket() -> None:
    table = RoutingTable(ME)
    a, b, c = in_bucket(0, 3)
    assert table.try_add(a, [ip4(8, 8, 1)], 0.0).status == AddStatus.ADDED
    assert table.try_add(b, [ip4(8, 8, 2)], 0.0).status == AddStatus.ADDED
    assert table.try_add(c, [ip4(8, 8, 3)], 0.0).status == AddStatus.REJECTED_DIVERSITY
    assert table.try_add(c, [ip4(8, 9, 3)], 0.0).status == AddStatus.ADDED  # other /16
    table.remove(a)
    d = in_bucket(0, 1, start=10_000)[0]
    assert table.try_add(d, [ip4(8, 8, 4)], 0.0).status == AddStatus.ADDED


def test_ip_diversity_per_table_and_any_address_counts() -> None:
    table = RoutingTable(ME)
    peers = [in_bucket(b, 1)[0] for b in range(4)]
    for p in peers[:3]:
        assert table.try_add(p, [ip4(9, 9, 9)], 0.0).status == AddStatus.ADDED
    res = table.try_add(peers[3], [ip4(1, 2), ip4(9, 9, 7)], 0.0)
    assert res.status == AddStatus.REJECTED_DIVERSITY
    assert table.try_add(peers[3], [ip4(1, 2)], 0.0).status == AddStatus.ADDED


def test_loopback_exemption_and_config() -> None:
    table = RoutingTable(ME)
    loop = in_bucket(0, 10)
    for p in loop:
        assert table.try_add(p, [ip4(127, 0, 0, 1)], 0.0).status == AddStatus.ADDED
    ip6_loop = bytes([0x29]) + bytes(15) + b"\x01"
    assert table.try_add(in_bucket(1, 1)[0], [ip6_loop], 0.0).status == AddStatus.ADDED

    strict = RoutingTable(ME, diversity=DiversityConfig(exempt_loopback=False))
    statuses = [strict.try_add(p, [ip4(127, 0, 0, 1)], 0.0).status for p in loop[:3]]
    assert statuses == [AddStatus.ADDED, AddStatus.ADDED, AddStatus.REJECTED_DIVERSITY]

    loose = RoutingTable(ME, diversity=DiversityConfig(per_bucket=5, per_table=5))
    statuses = [loose.try_add(p, [ip4(5, 5)], 0.0).status for p in loop[:6]]
    assert statuses.count(AddStatus.ADDED) == 5

    off = RoutingTable(ME, diversity=DiversityConfig(enabled=False))
    assert all(off.try_add(p, [ip4(5, 5)], 0.0).status == AddStatus.ADDED for p in loop)


def test_ipv6_grouped_by_32() -> None:
    table = RoutingTable(ME)
    net = bytes([0x29, 0x20, 0x01, 0x0D, 0xB8])
    peers = in_bucket(0, 3)
    for i, p in enumerate(peers):
        status = table.try_add(p, [net + bytes(11) + bytes([i + 1])], 0.0).status
        assert status == (AddStatus.ADDED if i < 2 else AddStatus.REJECTED_DIVERSITY)


# --- refresh ---


def test_refresh_scheduling_and_keys() -> None:
    table = RoutingTable(ME, now=0.0)
    for b in range(6):
        table.try_add(in_bucket(b, 1)[0], [], 0.0)
    assert table.due_refreshes(10.0, 600.0) == []
    assert table.due_refreshes(10.0, 600.0, force=True) == list(range(6))
    assert table.due_refreshes(600.0, 600.0) == list(range(6))
    rng = random.Random(1)
    for b in range(16):
        key = table.refresh_key(b, rng)
        assert common_prefix_len(ME_KEY, kad_key(key)) == b
    table.mark_refreshed(kad_key(table.refresh_key(2, rng)), 500.0)
    assert table.due_refreshes(700.0, 600.0) == [0, 1, 3, 4, 5]
    assert table.stale_peers(700.0, 800.0) == []
    table.seen(in_bucket(0, 1)[0], 650.0)
    assert len(table.stale_peers(700.0, 300.0)) == 5


# --- lookups ---


class World:
    """Peers that answer FIND_NODE/GET_PROVIDERS with the k closest peers they know (all of them)."""

    def __init__(self, n: int, k: int) -> None:
        self.ids = [pid(i) for i in range(1, n + 1)]
        self.k = k
        self.providers: dict[tuple[bytes, bytes], list[Peer]] = {}

    def closest(self, key: bytes, n: int) -> list[bytes]:
        t = kad_key(key)
        return sorted(self.ids, key=lambda p: kad_key(p) ^ t)[:n]

    def answer(self, peer: bytes, req: Message) -> Message:
        # each peer only knows ids within its own neighbourhood, so lookups need several hops
        t = kad_key(req.key)
        mine = kad_key(peer) ^ t
        closer = [p for p in self.closest(req.key, 200) if kad_key(p) ^ t < mine][-self.k :]
        return Message(
            req.type,
            req.key,
            closer_peers=tuple(Peer(p) for p in closer),
            provider_peers=tuple(self.providers.get((peer, req.key), [])),
        )


def drive(lk: Lookup, world: World, dead: set[bytes] = frozenset(), start: float = 0.0) -> float:  # type: ignore[assignment]
    """Answer every request after 1 s (dead peers never answer); returns the end time."""
    now = start
    pending: list[bytes] = []
    for _ in range(10_000):
        sent = lk.step(now)
        assert len(lk.in_flight()) <= lk.alpha * len(lk._paths)
        pending.extend(p.id for p in sent)
        if lk.done:
            return now
        now += 1.0
        answering = [p for p in pending if p not in dead]
        pending = [p for p in pending if p in dead]
        for p in answering:
            lk.on_response(p, world.answer(p, lk.request), now)
    raise AssertionError("lookup did not finish")


def test_lookup_finds_k_closest_and_terminates_when_they_answered() -> None:
    world = World(400, k=5)
    target = pid(10_000)
    seeds = [Peer(p) for p in world.ids[:5]]
    lk = Lookup(MessageType.FIND_NODE, target, seeds, local_id=ME, now=0.0, k=5, alpha=2)
    drive(lk, world)
    res = lk.result()
    truth = world.closest(target, 5)
    assert [p.id for p in res.closest] == truth
    assert all(lk.state_of(p) == QueryState.SUCCEEDED for p in truth)
    assert res.stats.queries == res.stats.responses
    assert res.stats.hops >= 2 and res.stats.finished is not None


def test_lookup_not_done_while_one_of_k_closest_is_outstanding() -> None:
    world = World(50, k=50)
    target = pid(777)
    seeds = [Peer(p) for p in world.ids]
    lk = Lookup(MessageType.FIND_NODE, target, seeds, local_id=ME, now=0.0, k=3, alpha=3)
    first = [p.id for p in lk.step(0.0)]
    assert first == world.closest(target, 3)
    lk.on_response(first[0], world.answer(first[0], lk.request), 1.0)
    lk.on_response(first[1], world.answer(first[1], lk.request), 1.0)
    assert lk.step(1.0) == [] and not lk.done
    lk.on_response(first[2], world.answer(first[2], lk.request), 2.0)
    assert lk.step(2.0) == [] and lk.done


def test_lookup_times_out_silent_peers_and_routes_around_them() -> None:
    world = World(300, k=5)
    target = pid(4242)
    truth = world.closest(target, 6)
    dead = {truth[0]}
    seeds = [Peer(p) for p in world.ids[:10]]
    lk = Lookup(
        MessageType.FIND_NODE, target, seeds, local_id=ME, now=0.0, k=5, alpha=3, timeout=5.0
    )
    drive(lk, world, dead)
    res = lk.result()
    assert [p.id for p in res.closest] == truth[1:6]
    assert res.stats.timeouts == 1 and lk.state_of(truth[0]) == QueryState.FAILED
    assert lk.next_deadline() is None


def test_expire_reports_timed_out_peers_and_late_answers_are_ignored() -> None:
    world = World(20, k=20)
    seeds = [Peer(p) for p in world.ids[:2]]
    lk = Lookup(MessageType.FIND_NODE, pid(5), seeds, local_id=ME, now=0.0, timeout=3.0)
    sent = [p.id for p in lk.step(0.0)]
    assert lk.next_deadline() == 3.0
    assert lk.expire(2.9) == []
    assert sorted(lk.expire(3.0)) == sorted(sent)
    assert not lk.on_response(sent[0], world.answer(sent[0], lk.request), 4.0)
    assert lk.step(4.0) == [] and lk.done and lk.result().closest == []


def test_wrong_response_type_counts_as_failure() -> None:
    lk = Lookup(MessageType.FIND_NODE, pid(5), [Peer(pid(1))], local_id=ME, now=0.0)
    lk.step(0.0)
    assert not lk.on_response(pid(1), Message(MessageType.PING), 1.0)
    assert lk.state_of(pid(1)) == QueryState.FAILED
    assert not lk.on_response(pid(99), Message(MessageType.FIND_NODE), 1.0)


def test_get_providers_stops_early() -> None:
    world = World(300, k=5)
    key = b"\x12\x20" + bytes(32)
    holder = world.closest(key, 1)[0]
    world.providers[holder, key] = [Peer(pid(50_000), (ip4(1, 1),))]
    seeds = [Peer(p) for p in world.ids[:5]]
    lk = Lookup(MessageType.GET_PROVIDERS, key, seeds, local_id=ME, now=0.0, k=5, want_providers=1)
    drive(lk, world)
    res = lk.result()
    assert res.providers == [Peer(pid(50_000), (ip4(1, 1),))]
    assert res.stats.hops == lk._by_id[holder].hop
    # without a provider it runs to normal termination and reports no hops
    lk2 = Lookup(MessageType.GET_PROVIDERS, pid(31337), seeds, local_id=ME, now=0.0, k=5)
    drive(lk2, world)
    assert lk2.result().providers == [] and lk2.result().stats.hops == 0


def test_disjoint_paths_never_share_a_peer() -> None:
    world = World(400, k=5)
    target = pid(9999)
    seeds = [Peer(p) for p in world.ids[:12]]
    lk = Lookup(
        MessageType.FIND_NODE,
        target,
        seeds,
        local_id=ME,
        now=0.0,
        k=5,
        alpha=2,
        disjoint_paths=3,
    )
    queried: list[bytes] = []
    now = 0.0
    while not lk.done:
        sent = [p.id for p in lk.step(now)]
        queried.extend(sent)
        now += 1.0
        for p in sent:
            lk.on_response(p, world.answer(p, lk.request), now)
    assert len(queried) == len(set(queried))
    assert {p.id for p in lk.result().closest} <= set(queried)
    assert lk.result().stats.failures == 0
    assert lk.result().closest[0].id == world.closest(target, 1)[0]


def test_lookup_with_no_seeds_is_done_at_once() -> None:
    lk = Lookup(MessageType.FIND_NODE, pid(1), [Peer(ME)], local_id=ME, now=0.0)
    assert lk.step(0.0) == [] and lk.done
    with pytest.raises(ValueError):
        Lookup(MessageType.PING, pid(1), [], local_id=ME, now=0.0)


# --- provider store ---


def test_provider_expiry_and_refresh() -> None:
    store = ProviderStore()
    key = b"\x12\x20" + bytes(32)
    assert store.add(key, pid(1), [ip4(1, 1)], 0.0)
    assert store.add(key, pid(2), [], 100.0)
    assert [p.id for p in store.get(key, 10.0)] == [pid(2), pid(1)]
    assert [p.id for p in store.get(key, KAD_PROVIDER_TTL)] == [pid(2)]
    store.add(key, pid(2), [], KAD_PROVIDER_TTL)  # republish extends
    assert store.get(key, KAD_PROVIDER_TTL + 101.0) == [Peer(pid(2))]
    assert store.expire(2 * KAD_PROVIDER_TTL + 1) == 1
    assert len(store) == 0 and store.keys() == []


def test_provider_addrs_expire_before_the_record() -> None:
    store = ProviderStore()
    key = b"\x12\x20" + bytes(32)
    store.add(key, pid(1), [ip4(1, 1)], 0.0)
    assert store.get(key, KAD_PROVIDER_ADDR_TTL - 1) == [Peer(pid(1), (ip4(1, 1),))]
    assert store.get(key, KAD_PROVIDER_ADDR_TTL) == [Peer(pid(1))]


def test_provider_caps() -> None:
    store = ProviderStore(max_per_key=2, max_total=3, ttl=100.0)
    a, b = b"\x12\x20" + bytes(32), b"\x12\x20" + bytes(31) + b"\x01"
    assert store.add(a, pid(1), [], 0.0) and store.add(a, pid(2), [], 0.0)
    assert not store.add(a, pid(3), [], 0.0)  # per-key cap
    assert store.add(a, pid(1), [], 1.0)  # refresh always allowed
    assert store.add(b, pid(4), [], 0.0)
    assert not store.add(b, pid(5), [], 50.0)  # total cap
    assert store.add(b, pid(5), [], 100.0)  # a's pid(2) and b's pid(4) expired
    assert len(store) == 2
    assert store.remove(a, pid(1)) and not store.remove(a, pid(1))


def test_reprovider_schedule() -> None:
    rp = Reprovider(interval=22.0)
    rp.add(b"k1", 0.0)
    rp.add(b"k2", 5.0)
    assert rp.due(5.0) == [b"k1", b"k2"]
    rp.announced(b"k1", 5.0)
    assert rp.due(6.0) == [b"k2"] and rp.next_due() == 5.0
    rp.announced(b"k2", 6.0)
    assert rp.due(27.0) == [b"k1"]
    rp.remove(b"k1")
    assert len(rp) == 1


def test_lookup_candidate_list_is_bounded() -> None:
    world = World(400, k=50)
    seeds = [Peer(p) for p in world.ids[:30]]
    lk = Lookup(MessageType.FIND_NODE, pid(7), seeds, local_id=ME, now=0.0, k=5, max_peers=40)
    drive(lk, world)
    assert len(lk._by_id) <= max(40, lk.stats.queries)
    assert lk.result().closest[0].id == world.closest(pid(7), 1)[0]


def test_shipped_preimage_table_is_correct() -> None:
    """Every shipped refresh preimage hashes into its own 16-bit prefix (no search at run time)."""
    import hashlib

    from fileshare.protocols.kad import routing

    counters = routing._load_preimage_counters()
    assert counters is not None and len(counters) == 1 << 16
    for prefix, counter in enumerate(counters):
        digest = hashlib.sha256(routing._preimage(counter)).digest()
        assert digest[0] << 8 | digest[1] == prefix


def test_refresh_keys_from_many_threads_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refresh keys land in the asked-for bucket, from the shipped table and, when it is missing,
    from the computed one, which is built once and never seen half-filled by another thread."""
    import hashlib
    import random
    from concurrent.futures import ThreadPoolExecutor

    from fileshare.protocols.kad import routing

    local = (1 << 255) - 1

    def keys() -> list[bytes]:
        with ThreadPoolExecutor(8) as pool:
            return list(
                pool.map(lambda i: routing.refresh_key(local, i % 16, random.Random(i)), range(64))
            )

    def check(found: list[bytes]) -> None:
        for i, key in enumerate(found):
            kad = int.from_bytes(hashlib.sha256(key).digest(), "big")
            cpl = 256 - (kad ^ local).bit_length()
            assert cpl == i % 16

    monkeypatch.setattr(routing, "_shipped", None)  # as in a fresh process
    check(keys())
    assert routing._shipped and not routing._prefix_table  # shipped table: nothing computed

    monkeypatch.setattr(routing, "_shipped", b"")  # as if preimages.bin were missing
    monkeypatch.setattr(routing, "_prefix_table", [])
    check(keys())
    assert len(routing._prefix_table) == 1 << 16
