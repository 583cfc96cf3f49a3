"""Kademlia DHT interop with js-libp2p (@libp2p/kad-dht 16, server mode) over 127.0.0.1.

Topology: our DHT server O; js peer J1 connected to O; js peer J2 connected to O only.
- O provides X: J1 finds O (with its addresses) as a provider of X.
- J1 provides Y: the record is stored on O (ADD_PROVIDER from js); O finds J1 as its provider;
  J2, which knows only O, finds J1 through O's GET_PROVIDERS answer.
"""

from __future__ import annotations

from pathlib import Path

import trio

from fileshare.identity.peerid import PeerId

from .dht_common import full_addr, our_dht_node, our_providers, sha256_cid, wait_until_in_table
from .peers import PeerFactory

SERVICES = ["identify", "ping", "kad"]


async def test_dht_provider_records_with_js(js_peer: PeerFactory, tmp_path: Path) -> None:
    async with our_dht_node(tmp_path / "ours") as ours:
        j1 = await js_peer(dial=[full_addr(ours)], services=SERVICES)
        await wait_until_in_table(ours, j1.peer_id)  # identify listed /ipfs/kad/1.0.0
        # js adds us after its own checks (a ping): wait until its table has us
        with trio.fail_after(20):
            while ours.host.peer_id.to_base58() not in (await j1.command("dht_peers"))["peers"]:
                await trio.sleep(0.2)

        # we provide, js finds us
        x = sha256_cid("fileshare->js provider record")
        assert await ours.provide(x) == 1
        reply = await j1.command("find_providers", cid=str(x), count=1)
        assert [p["peer_id"] for p in reply["providers"]] == [str(ours.host.peer_id)]
        assert any(
            a.startswith(str(ours.host.listen_addrs()[0])) for a in reply["providers"][0]["addrs"]
        )

        # js provides, the record lands on our server, we find js
        y = sha256_cid("js->fileshare provider record")
        await j1.command("provide", cid=str(y))
        with trio.fail_after(20):  # ADD_PROVIDER has no reply: js may return before we stored it
            while not (records := ours.providers.get(y.multihash, trio.current_time())):
                await trio.sleep(0.05)
        assert [str(PeerId.from_bytes(r.id)) for r in records] == [j1.peer_id]
        found = await our_providers(ours, y)
        assert [p for p, _ in found] == [j1.peer_id]
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in found[0][1])

        # a second js peer that knows only us finds the js provider through our answer
        j2 = await js_peer(dial=[full_addr(ours)], services=SERVICES)
        reply = await j2.command("find_providers", cid=str(y), count=1)
        assert [p["peer_id"] for p in reply["providers"]] == [j1.peer_id]
