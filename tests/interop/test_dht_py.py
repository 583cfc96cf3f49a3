"""Kademlia DHT interop with py-libp2p 0.8.1 (KadDHT, server mode) over 127.0.0.1.

Topology: our DHT server O; py peers P1 and P2, each connected to O only.
- O provides X: P1 finds O (with its addresses) as a provider of X.
- P1 provides Y: the record is stored on O (ADD_PROVIDER from py); O finds P1 as its provider;
  P2, which knows only O, finds P1 through O's GET_PROVIDERS answer.

py-libp2p adds a peer to its routing table only once that peer sent it a DHT request, so O runs
a self lookup (which queries every peer in its table) after each py peer connected.
"""

from __future__ import annotations

from pathlib import Path

import trio

from fileshare.identity.peerid import PeerId
from fileshare.protocols.kad.service import KadService

from .dht_common import full_addr, our_dht_node, our_providers, sha256_cid, wait_until_in_table
from .peers import PeerFactory, PeerProcess

SERVICES = ["identify", "ping", "kad"]


async def _known_by(peer: PeerProcess, ours: KadService) -> None:
    """Wait until ``peer`` has us in its routing table (we query it meanwhile)."""
    await wait_until_in_table(ours, peer.peer_id)
    with trio.fail_after(20):
        while str(ours.host.peer_id) not in (await peer.command("dht_peers"))["peers"]:
            await ours.get_closest_peers(ours.local_id, timeout=5)
            await trio.sleep(0.1)


async def test_dht_provider_records_with_py(py_peer: PeerFactory, tmp_path: Path) -> None:
    async with our_dht_node(tmp_path / "ours") as ours:
        p1 = await py_peer(dial=[full_addr(ours)], services=SERVICES)
        await _known_by(p1, ours)

        # we provide, py finds us
        x = sha256_cid("fileshare->py provider record")
        assert await ours.provide(x) == 1
        reply = await p1.command("find_providers", cid=str(x), count=5)
        assert [p["peer_id"] for p in reply["providers"]] == [str(ours.host.peer_id)]
        assert any(
            a.startswith(str(ours.host.listen_addrs()[0])) for a in reply["providers"][0]["addrs"]
        )

        # py provides, the record lands on our server, we find py
        y = sha256_cid("py->fileshare provider record")
        assert (await p1.command("provide", cid=str(y)))["ok_provide"]
        with trio.fail_after(10):  # py sends ADD_PROVIDER without waiting for our echo
            while not ours.providers.get(y.multihash, trio.current_time()):
                await trio.sleep(0.05)
        records = ours.providers.get(y.multihash, trio.current_time())
        assert [str(PeerId.from_bytes(r.id)) for r in records] == [p1.peer_id]
        found = await our_providers(ours, y)
        assert [p for p, _ in found] == [p1.peer_id]
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in found[0][1])

        # a second py peer that knows only us finds the py provider through our answer
        p2 = await py_peer(dial=[full_addr(ours)], services=SERVICES)
        await _known_by(p2, ours)
        reply = await p2.command("find_providers", cid=str(y), count=5)
        assert p1.peer_id in [p["peer_id"] for p in reply["providers"]]
