"""Gossipsub interop with real peers we did not write, on 127.0.0.1, StrictSign both ways:
js-libp2p (@libp2p/gossipsub 17) and py-libp2p 0.8.1 (0.2 s heartbeat).

The exchange runs against both implementations, over a connection dialled by them and over one
dialled by us. The relay test at the end runs one peer of each kind, each knowing only us.
"""

from __future__ import annotations

import base64

import pytest
import trio

from fileshare.net.addrs import parse

from .conftest import DIALERS
from .peers import MAX_WAIT, PeerFactory
from .pubsub_common import TOPIC, announcement_doc, check_exchange, pubsub_node, wait_meshed

pytestmark = pytest.mark.interop

SERVICES = ["identify", "ping", "gossipsub"]


@pytest.fixture(params=["js", "py"])
def remote(
    request: pytest.FixtureRequest, py_peer: PeerFactory, js_peer: PeerFactory
) -> PeerFactory:
    # both factories are requested (pytest-trio cannot resolve async fixtures lazily); a factory
    # starts nothing until it is called
    return js_peer if request.param == "js" else py_peer


@pytest.mark.parametrize("dialer", DIALERS)
async def test_gossipsub_both_directions(remote: PeerFactory, dialer: str) -> None:
    peer = await remote(services=SERVICES)
    await peer.command("subscribe", topic=TOPIC)
    async with pubsub_node() as node:
        if dialer == "they_dial_us":
            await peer.command("connect", addr=node.addr)
        else:
            with trio.fail_after(MAX_WAIT):
                await node.host.dial(parse(peer.addr))
        await check_exchange(node, peer)


async def test_we_relay_between_py_and_js(py_peer: PeerFactory, js_peer: PeerFactory) -> None:
    """py-libp2p and js-libp2p only know us: a message from one reaches the other through us."""
    py = await py_peer(services=SERVICES)
    js = await js_peer(services=SERVICES)
    for p in (py, js):
        await p.command("subscribe", topic=TOPIC)
    async with pubsub_node() as node:
        for p in (py, js):
            await p.command("connect", addr=node.addr)
            await wait_meshed(node, p)
        for src, dst, name in ((py, js, "py-to-js.txt"), (js, py, "js-to-py.txt")):
            doc = announcement_doc(name)
            await src.command("publish", topic=TOPIC, data_b64=base64.b64encode(doc).decode())
            with trio.fail_after(MAX_WAIT):
                while True:
                    got = (await dst.command("received", topic=TOPIC))["messages"]
                    if any(base64.b64decode(m["data_b64"]) == doc for m in got):
                        break
                    await trio.sleep(0.05)
            assert [m["from"] for m in got if base64.b64decode(m["data_b64"]) == doc] == [
                src.peer_id
            ]
