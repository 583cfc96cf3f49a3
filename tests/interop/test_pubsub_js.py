"""Gossipsub interop with js-libp2p (@libp2p/gossipsub 17, StrictSign) on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from fileshare.net.addrs import parse

from .conftest import MAX_WAIT, PeerFactory
from .pubsub_common import TOPIC, check_exchange, pubsub_node

pytestmark = pytest.mark.interop

JS_SERVICES = ["identify", "ping", "gossipsub"]


@pytest.mark.parametrize("dialer", ["they_dial_us", "we_dial_them"])
async def test_js_gossipsub_both_directions(js_peer: PeerFactory, dialer: str) -> None:
    peer = await js_peer(services=JS_SERVICES)
    await peer.command("subscribe", topic=TOPIC)
    async with pubsub_node() as node:
        if dialer == "they_dial_us":
            await peer.command("connect", addr=node.addr)
        else:
            with trio.fail_after(MAX_WAIT):
                await node.host.dial(parse(peer.addr))
        await check_exchange(node, peer)
