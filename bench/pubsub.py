"""Gossipsub on loopback: N nodes in one process with real sockets (TCP + Noise + yamux).

    .venv/bin/python bench/pubsub.py                          # 30 nodes, 1,000 messages
    .venv/bin/python bench/pubsub.py --nodes 8 --messages 50  # quick check

Every node dials ``--degree`` random earlier nodes (a connected random graph), all subscribe to
one topic, meshes settle for a few heartbeats, then ``--messages`` messages are published from
random nodes at ``--rate`` per second. Reported: delivery ratio (deliveries / (messages x
(nodes - 1))), latency from publish to each delivery (p50/p99/max; one clock, one process),
duplicates per message (copies the routers received and dropped as already seen) and copies the
application saw twice (must be 0). Everything shares one CPU core, so latency includes queueing
behind the other 29 nodes' crypto.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fileshare.identity.keys import PrivateKey  # noqa: E402
from fileshare.net.addrs import parse, with_peer  # noqa: E402
from fileshare.net.host import Host, open_host  # noqa: E402
from fileshare.protocols.pubsub.router import Delivered  # noqa: E402
from fileshare.protocols.pubsub.service import PubsubService  # noqa: E402
from fileshare.protocols.pubsub.state import GossipConfig  # noqa: E402

TOPIC = "bench/pubsub"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def _consume(
    node: int,
    channel: trio.MemoryReceiveChannel[Delivered],
    arrivals: dict[tuple[int, int], float],
    app_dups: Counter[int],
) -> None:
    async for d in channel:
        idx = int.from_bytes(d.data[:4], "big")
        key = (idx, node)
        if key in arrivals:
            app_dups[idx] += 1
        else:
            arrivals[key] = trio.current_time()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    config = GossipConfig(heartbeat_interval=args.heartbeat)
    arrivals: dict[tuple[int, int], float] = {}
    app_dups: Counter[int] = Counter()
    sent_at: dict[int, float] = {}
    publisher: dict[int, int] = {}
    async with AsyncExitStack() as stack:
        hosts: list[Host] = []
        for _ in range(args.nodes):
            host = await stack.enter_async_context(
                open_host(PrivateKey.generate(), listen=[parse("/ip4/127.0.0.1/tcp/0")])
            )
            hosts.append(host)
        nodes = [
            PubsubService(h, config=config, rng=random.Random(args.seed * 1000 + i))
            for i, h in enumerate(hosts)
        ]
        nursery = await stack.enter_async_context(trio.open_nursery())
        for i, svc in enumerate(nodes):
            nursery.start_soon(_consume, i, svc.subscribe(TOPIC), arrivals, app_dups)
        setup_start = trio.current_time()
        for i in range(1, args.nodes):
            for j in rng.sample(range(i), min(i, args.degree)):
                await hosts[i].dial(with_peer(hosts[j].listen_addrs()[0], hosts[j].peer_id))
        with trio.move_on_after(30):
            while any(
                len(svc.router.mesh_peers(TOPIC)) < min(config.d_lo, len(svc.topic_peers(TOPIC)))
                or not svc.topic_peers(TOPIC)
                for svc in nodes
            ):
                await trio.sleep(0.1)
        await trio.sleep(3 * args.heartbeat)
        setup_s = trio.current_time() - setup_start
        mesh_sizes = [len(svc.router.mesh_peers(TOPIC)) for svc in nodes]
        conns = [len(h.connections) for h in hosts]

        pad = b"\x00" * max(0, args.size - 4)
        pub_start = trio.current_time()
        for k in range(args.messages):
            p = rng.randrange(args.nodes)
            publisher[k] = p
            sent_at[k] = trio.current_time()
            await nodes[p].publish(TOPIC, k.to_bytes(4, "big") + pad)
            await trio.sleep_until(pub_start + (k + 1) / args.rate)
        expected = args.messages * (args.nodes - 1)
        with trio.move_on_after(args.drain):
            while len(arrivals) < expected:
                await trio.sleep(0.05)
        wall = trio.current_time() - pub_start
        router_dups = sum(svc.router.stats["duplicate"] for svc in nodes)
        dropped = sum(svc.stats["send_queue_full"] + svc.stats["delivery_dropped"] for svc in nodes)
        iwant_served = sum(svc.router.stats["iwant_over_limit"] for svc in nodes)
        nursery.cancel_scope.cancel()

    latencies = [(t - sent_at[idx]) * 1000 for (idx, _node), t in arrivals.items()]
    return {
        "nodes": args.nodes,
        "messages": args.messages,
        "rate_per_s": args.rate,
        "size_bytes": args.size,
        "degree_dialled": args.degree,
        "connections_per_node_mean": round(statistics.fmean(conns), 1),
        "mesh_size_min_mean_max": [
            min(mesh_sizes),
            round(statistics.fmean(mesh_sizes), 1),
            max(mesh_sizes),
        ],
        "setup_s": round(setup_s, 2),
        "deliveries": len(arrivals),
        "expected": expected,
        "delivery_ratio": round(len(arrivals) / expected, 5),
        "latency_ms_p50": round(percentile(latencies, 50), 2),
        "latency_ms_p99": round(percentile(latencies, 99), 2),
        "latency_ms_max": round(max(latencies, default=float("nan")), 2),
        "duplicates_per_message": round(router_dups / args.messages, 2),
        "app_duplicates": sum(app_dups.values()),
        "frames_dropped": dropped,
        "iwant_over_limit": iwant_served,
        "wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=50.0, help="messages published per second")
    ap.add_argument("--size", type=int, default=256, help="payload bytes per message")
    ap.add_argument("--degree", type=int, default=4, help="connections each node dials")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="seconds")
    ap.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args(argv)
    result = trio.run(run, args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")
    ok = result["delivery_ratio"] == 1.0 and result["latency_ms_p99"] < 250
    print(f"goal (100% delivered, p99 < 250 ms): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
