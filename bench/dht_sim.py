"""Kademlia DHT simulation: thousands of nodes in one process, no sockets, no trio, no real time.

Every node runs the real sans-io core (``RoutingTable``, ``Lookup``, ``ProviderStore``,
``KadServer``). A discrete-event scheduler (a heap of ``(time, seq, action)``) carries requests and
responses with a per-link latency of 10-100 ms (fixed per pair of nodes, derived from the seed).

Phases:
1. Bootstrap: node 0 starts alone; every 50 ms another node joins knowing only node 0, runs a
   FIND_NODE lookup for its own id, then one refresh lookup per bucket up to its last non-empty one
   (at most bucket 15). Servers add requesters to their tables, clients add responders; a full
   bucket pings its least-recently-seen peer and keeps it if it answers; unanswered requests
   remove the peer from the querier's table.
2. Provide: ``--keys`` random sha2-256 multihashes, each announced by a random node (FIND_NODE for
   the key, then ADD_PROVIDER to the k closest that answered).
3. Measure, once per churn level (0%, 10%, 30%): that fraction of the non-provider nodes is gone
   (never answers; the querier times it out after KAD_RPC_TIMEOUT simulated seconds); then
   ``--lookups`` GET_PROVIDERS lookups for random provided keys from random live nodes, stopping at
   the first provider. Routing tables and stores are frozen while measuring, so every churn level
   starts from the same post-bootstrap state (dead peers are still in the tables: worst case).

Figures per level: success = the lookup returned at least one provider of the key.
hops = length of the request chain that reached the first provider record: a peer taken from the
querier's own table is hop 1, a peer learned from a hop-h answer is hop h+1 (``LookupStats.hops``).
msgs = requests the querier sent in that lookup (each answered one adds one response; requests to
gone nodes are sent and time out). time = simulated seconds until the lookup finished.

    python bench/dht_sim.py --nodes 5000 --lookups 1000 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fileshare.errors import ProtocolError
from fileshare.limits import KAD_ALPHA, KAD_K, KAD_RPC_TIMEOUT
from fileshare.protocols.kad import (
    AddStatus,
    KadServer,
    Lookup,
    Message,
    MessageType,
    Peer,
    ProviderStore,
    RoutingTable,
    decode_message,
    encode_message,
)

JOIN_INTERVAL = 0.05  # simulated seconds between two joins
LOOKUP_INTERVAL = 0.01  # between two measured lookups


class Scheduler:
    """Discrete-event loop over simulated time."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def at(self, t: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, action))

    def run(self) -> None:
        heap = self._heap
        while heap:
            t, _, action = heapq.heappop(heap)
            self.now = t
            action()


@dataclass(slots=True, eq=False)
class SimNode:
    idx: int
    peer_id: bytes
    key: int
    addrs: tuple[bytes, ...]
    table: RoutingTable
    providers: ProviderStore
    server: KadServer
    alive: bool = True

    @property
    def info(self) -> Peer:
        return Peer(self.peer_id, self.addrs)


def _public_ipv4(rng: random.Random) -> bytes:
    while True:
        ip = IPv4Address(rng.getrandbits(32))
        if ip.is_global and not ip.is_multicast:
            return ip.packed


class SimNetwork:
    """Nodes, links and RPCs over the scheduler."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        k: int = KAD_K,
        alpha: int = KAD_ALPHA,
        timeout: float = KAD_RPC_TIMEOUT,
        disjoint_paths: int = 1,
        wire: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.k = k
        self.alpha = alpha
        self.timeout = timeout
        self.disjoint_paths = disjoint_paths
        self.wire = wire
        self.sched = Scheduler()
        self.learning = True
        self.rpcs = 0  # requests sent, all kinds
        self.keys: dict[bytes, int] = {}
        self.nodes: list[SimNode] = []
        self.by_id: dict[bytes, SimNode] = {}
        for i in range(n):
            # an Ed25519-style identity-multihash peer id with a random "public key"
            peer_id = b"\x00\x24\x08\x01\x12\x20" + self.rng.randbytes(32)
            key = self.key_of(peer_id)
            addr = b"\x04" + _public_ipv4(self.rng) + b"\x06\x0f\xa1"  # /ip4/x/tcp/4001
            table = RoutingTable(peer_id, k=k, local_key=key)
            providers = ProviderStore()
            server = KadServer(
                peer_id, table, providers, local_addrs=lambda a=addr: (a,), k=k, key_fn=self.key_of
            )
            node = SimNode(i, peer_id, key, (addr,), table, providers, server)
            self.nodes.append(node)
            self.by_id[peer_id] = node

    def key_of(self, data: bytes) -> int:
        """Kad key with a cache: sha256 once per distinct id or key in the whole simulation."""
        key = self.keys.get(data)
        if key is None:
            key = self.keys[data] = int.from_bytes(hashlib.sha256(data).digest(), "big")
        return key

    def latency(self, a: SimNode, b: SimNode) -> float:
        lo, hi = (a.idx, b.idx) if a.idx < b.idx else (b.idx, a.idx)
        h = hash((lo, hi, self.seed)) & 0xFFFFFFFF
        return 0.010 + (h % 90_001) / 1_000_000  # 10..100 ms, fixed per link

    # -- RPC --

    def rpc(
        self, src: SimNode, dst_id: bytes, msg: Message, reply: Callable[[Message], None]
    ) -> None:
        """Send ``msg``; ``reply`` runs when (and only if) an answer arrives."""
        dst = self.by_id.get(dst_id)
        self.rpcs += 1
        if dst is None:
            return
        lat = self.latency(src, dst)
        if self.wire:
            msg = decode_message(encode_message(msg))

        def deliver() -> None:
            if not dst.alive:
                return
            resp = self.handle(dst, src, msg)
            if resp is not None:
                out = decode_message(encode_message(resp)) if self.wire else resp
                self.sched.at(self.sched.now + lat, lambda: reply(out) if src.alive else None)

        self.sched.at(self.sched.now + lat, deliver)

    def handle(self, node: SimNode, remote: SimNode, msg: Message) -> Message | None:
        now = self.sched.now
        if self.learning:
            self.offer(node, remote)
        try:
            return node.server.handle(remote.peer_id, msg, now)
        except ProtocolError:  # invalid request: the stream is reset, no answer
            return None

    def offer(self, node: SimNode, peer: SimNode) -> None:
        """``node`` heard from server ``peer``: try to add it (with a liveness check if needed)."""
        res = node.table.try_add(peer.peer_id, peer.addrs, self.sched.now, key=peer.key)
        if res.status == AddStatus.PING_NEEDED and res.ping is not None:
            self.ping(node, res.ping)

    def ping(self, node: SimNode, old: bytes) -> None:
        answered = [False]

        def on_reply(_: Message) -> None:
            if not answered[0]:
                answered[0] = True
                node.table.ping_result(old, True, self.sched.now)

        def on_timeout() -> None:
            if not answered[0]:
                answered[0] = True
                node.table.ping_result(old, False, self.sched.now)

        self.rpc(node, old, Message(MessageType.PING), on_reply)
        self.sched.at(self.sched.now + self.timeout, on_timeout)

    # -- lookups --

    def lookup(
        self,
        node: SimNode,
        kind: MessageType,
        key: bytes,
        done: Callable[[Lookup], None],
        *,
        want_providers: int = KAD_K,
    ) -> None:
        now = self.sched.now
        target = self.key_of(key)
        seeds = [e.info for e in node.table.closest(target, self.k)]
        lk = Lookup(
            kind,
            key,
            seeds,
            local_id=node.peer_id,
            now=now,
            k=self.k,
            alpha=self.alpha,
            timeout=self.timeout,
            want_providers=want_providers,
            disjoint_paths=self.disjoint_paths,
            key_fn=self.key_of,
        )
        finished = [False]
        wake = [float("inf")]  # earliest timer pending for this lookup

        def on_timer() -> None:
            wake[0] = float("inf")
            pump()

        def pump() -> None:
            if finished[0]:
                return
            t = self.sched.now
            for gone in lk.expire(t):
                if self.learning:
                    node.table.remove(gone)
            for peer in lk.step(t):
                self.rpc(node, peer.id, lk.request, make_reply(peer.id))
            deadline = lk.next_deadline()
            if deadline is not None and deadline < wake[0]:
                wake[0] = deadline
                self.sched.at(deadline, on_timer)
            if lk.done:
                finished[0] = True
                if self.learning:
                    node.table.mark_refreshed(target, t)
                done(lk)

        def make_reply(peer_id: bytes) -> Callable[[Message], None]:
            def on_reply(msg: Message) -> None:
                if finished[0]:
                    return
                if lk.on_response(peer_id, msg, self.sched.now) and self.learning:
                    self.offer(node, self.by_id[peer_id])
                pump()

            return on_reply

        pump()

    def join(self, node: SimNode, bootstrap: SimNode) -> None:
        node.table.try_add(bootstrap.peer_id, bootstrap.addrs, self.sched.now, key=bootstrap.key)
        rng = random.Random(hash((self.seed, node.idx)))

        def after_self(_: Lookup) -> None:
            buckets = node.table.due_refreshes(self.sched.now, force=True)
            refresh_next(buckets)

        def refresh_next(buckets: list[int]) -> None:
            if buckets:
                key = node.table.refresh_key(buckets[0], rng)
                self.lookup(node, MessageType.FIND_NODE, key, lambda _: refresh_next(buckets[1:]))

        self.lookup(node, MessageType.FIND_NODE, node.peer_id, after_self)

    def provide(self, node: SimNode, key: bytes) -> None:
        def announce(lk: Lookup) -> None:
            msg = Message(MessageType.ADD_PROVIDER, key, provider_peers=(node.info,))
            for peer in lk.result().closest:
                self.rpc(node, peer.id, msg, lambda _: None)
            node.providers.add(key, node.peer_id, node.addrs, self.sched.now)

        self.lookup(node, MessageType.FIND_NODE, key, announce)


@dataclass(slots=True)
class LevelReport:
    gone_fraction: float
    lookups: int
    successes: int
    hops: list[int] = field(default_factory=list)
    msgs: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / self.lookups if self.lookups else 0.0

    def line(self) -> str:
        def q(values: Sequence[float], p: float) -> float:
            s = sorted(values)
            return s[min(len(s) - 1, int(p * len(s)))] if s else 0.0

        hops = self.hops or [0]
        return (
            f"gone={self.gone_fraction:4.0%} lookups={self.lookups} "
            f"success={self.success_rate:.2%} "
            f"hops median={statistics.median(hops):g} mean={statistics.fmean(hops):.2f} "
            f"p95={q(hops, 0.95):g} max={max(hops)} "
            f"msgs median={statistics.median(self.msgs or [0]):g} "
            f"mean={statistics.fmean(self.msgs or [0]):.1f} p95={q(self.msgs, 0.95):g} "
            f"time median={statistics.median(self.times or [0]):.2f}s "
            f"p95={q(self.times, 0.95):.2f}s"
        )


@dataclass(slots=True)
class SimReport:
    nodes: int
    bootstrap_rpcs: int
    bootstrap_seconds: float
    mean_table_size: float
    levels: list[LevelReport]
    wall_seconds: float


def run_simulation(
    nodes: int = 5000,
    lookups: int = 1000,
    seed: int = 1,
    *,
    keys: int = 100,
    levels: Sequence[float] = (0.0, 0.1, 0.3),
    k: int = KAD_K,
    alpha: int = KAD_ALPHA,
    disjoint_paths: int = 1,
    wire: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SimReport:
    started = time.perf_counter()
    net = SimNetwork(nodes, seed, k=k, alpha=alpha, disjoint_paths=disjoint_paths, wire=wire)
    rng = random.Random(seed + 1)
    sched = net.sched
    boot = net.nodes[0]
    for i, node in enumerate(net.nodes[1:], start=1):
        sched.at(i * JOIN_INTERVAL, lambda node=node: net.join(node, boot))  # type: ignore[misc]
    sched.run()
    bootstrap_seconds = sched.now
    bootstrap_rpcs = net.rpcs
    if progress:
        progress(f"bootstrap done: {bootstrap_rpcs} requests, {time.perf_counter() - started:.1f}s")

    provided: list[tuple[bytes, SimNode]] = []
    t0 = sched.now
    for j in range(keys):
        key = b"\x12\x20" + rng.randbytes(32)
        provider = rng.choice(net.nodes)
        provided.append((key, provider))
        sched.at(t0 + j * LOOKUP_INTERVAL, lambda p=provider, kk=key: net.provide(p, kk))  # type: ignore[misc]
    sched.run()

    net.learning = False
    providers = {p.idx for _, p in provided}
    candidates = [n for n in net.nodes if n.idx not in providers]
    rng.shuffle(candidates)
    reports: list[LevelReport] = []
    for level in levels:
        gone = {n.idx for n in candidates[: int(level * nodes)]}
        for n in net.nodes:
            n.alive = n.idx not in gone
        live = [n for n in net.nodes if n.alive]
        report = LevelReport(level, lookups, 0)
        t0 = sched.now
        for j in range(lookups):
            key, provider = rng.choice(provided)
            querier = rng.choice(live)
            sched.at(t0 + j * LOOKUP_INTERVAL, _measure(net, querier, key, provider, report))
        sched.run()
        reports.append(report)
        if progress:
            progress(report.line())
    for n in net.nodes:
        n.alive = True
    mean_table = statistics.fmean(len(n.table) for n in net.nodes)
    return SimReport(
        nodes,
        bootstrap_rpcs,
        bootstrap_seconds,
        mean_table,
        reports,
        time.perf_counter() - started,
    )


def _measure(
    net: SimNetwork, querier: SimNode, key: bytes, provider: SimNode, report: LevelReport
) -> Callable[[], None]:
    def start() -> None:
        started = net.sched.now
        local = querier.providers.get(key, started)
        if any(p.id == provider.peer_id for p in local):
            report.successes += 1
            report.hops.append(0)
            report.msgs.append(0)
            report.times.append(0.0)
            return

        def done(lk: Lookup) -> None:
            res = lk.result()
            if any(p.id == provider.peer_id for p in res.providers):
                report.successes += 1
                report.hops.append(res.stats.hops)
            report.msgs.append(res.stats.queries)
            report.times.append(net.sched.now - started)

        net.lookup(querier, MessageType.GET_PROVIDERS, key, done, want_providers=1)

    return start


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--lookups", type=int, default=1000, help="provider lookups per churn level")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keys", type=int, default=100, help="keys provided before measuring")
    ap.add_argument("--alpha", type=int, default=KAD_ALPHA)
    ap.add_argument("--k", type=int, default=KAD_K)
    ap.add_argument("--disjoint", type=int, default=1, help="disjoint lookup paths")
    ap.add_argument("--wire", action="store_true", help="encode/decode every message")
    args = ap.parse_args(argv)
    report = run_simulation(
        args.nodes,
        args.lookups,
        args.seed,
        keys=args.keys,
        k=args.k,
        alpha=args.alpha,
        disjoint_paths=args.disjoint,
        wire=args.wire,
        progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(
        f"dht_sim nodes={report.nodes} seed={args.seed} k={args.k} alpha={args.alpha} "
        f"disjoint={args.disjoint} keys={args.keys}"
    )
    print(
        f"bootstrap: {report.bootstrap_rpcs} requests ({report.bootstrap_rpcs / report.nodes:.0f}"
        f"/node), {report.bootstrap_seconds:.0f} simulated s, "
        f"mean routing table {report.mean_table_size:.1f} peers"
    )
    for level in report.levels:
        print(level.line())
    print(f"wall time {report.wall_seconds:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
