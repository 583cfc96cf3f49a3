"""Gossipsub interop with py-libp2p 0.8.1 (0.2 s heartbeat, StrictSign) on 127.0.0.1."""

from __future__ import annotations

import base64

import pytest
import trio

from fileshare.net.addrs import parse

from .conftest import MAX_WAIT, PeerFactory
from .pubsub_common import TOPIC, announcement_doc, check_exchange, pubsub_node, wait_meshed

pytestmark = pytest.mark.interop

PY_SERVICES = ["identify", "ping", "gossipsub"]


@pytest.mark.parametrize("dialer", ["they_dial_us", "we_dial_them"])
async def test_py_gossipsub_both_directions(py_peer: PeerFactory, dialer: str) -> None:
    peer = await py_peer(services=PY_SERVICES)
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
    py = await py_peer(services=PY_SERVICES)
    js = await js_peer(services=["identify", "ping", "gossipsub"])
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
