"""Shared by test_pubsub_interop.py: our pubsub node and the exchange checks."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from fileshare.content.cid import CID
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net.addrs import parse
from fileshare.net.host import Host, open_host
from fileshare.protocols.identify import IdentifyService
from fileshare.protocols.ping import PingService
from fileshare.protocols.pubsub.announce import (
    ANNOUNCE_TOPIC,
    Announcement,
    encode_announcement,
    received_announcement,
    subscribe_announcements,
)
from fileshare.protocols.pubsub.router import Delivered
from fileshare.protocols.pubsub.service import PubsubService

from .peers import LOOPBACK_LISTEN, MAX_WAIT, PeerProcess

TOPIC = ANNOUNCE_TOPIC


@dataclass
class PubsubNode:
    host: Host
    pubsub: PubsubService
    messages: trio.MemoryReceiveChannel[Delivered]

    @property
    def addr(self) -> str:
        return f"{self.host.listen_addrs()[0]}/p2p/{self.host.peer_id}"


@asynccontextmanager
async def pubsub_node() -> AsyncIterator[PubsubNode]:
    """Our host (identify, ping, gossipsub) subscribed to the announcement topic."""
    async with open_host(PrivateKey.generate(), listen=[parse(LOOPBACK_LISTEN)]) as host:
        IdentifyService(host)
        PingService(host)
        pubsub = PubsubService(host)
        yield PubsubNode(host, pubsub, subscribe_announcements(pubsub, TOPIC))


def announcement_doc(name: str, author: PeerId | None = None) -> bytes:
    cid = CID.from_data(0x55, name.encode())
    return encode_announcement(Announcement(cid, name, 42, "blake3", 1_764_000_000, (), author))


async def wait_meshed(node: PubsubNode, peer: PeerProcess) -> None:
    """Both sides list each other as topic subscribers and the peer has us in its mesh."""
    their_id = PeerId.from_string(peer.peer_id)
    with trio.fail_after(MAX_WAIT):
        while their_id not in node.pubsub.topic_peers(TOPIC):
            await trio.sleep(0.05)
        while True:
            seen = await peer.command("topic_peers", topic=TOPIC)
            if str(node.host.peer_id) in seen["mesh"]:
                break
            await trio.sleep(0.1)


async def check_exchange(node: PubsubNode, peer: PeerProcess) -> None:
    """We publish to the peer and the peer publishes to us, on one topic, signed both ways."""
    await wait_meshed(node, peer)
    ours = announcement_doc("from-us.txt", node.host.peer_id)
    await node.pubsub.publish(TOPIC, ours)
    with trio.fail_after(MAX_WAIT):
        while True:
            got = (await peer.command("received", topic=TOPIC))["messages"]
            if got:
                break
            await trio.sleep(0.05)
    assert [base64.b64decode(m["data_b64"]) for m in got] == [ours]
    assert got[0]["from"] == str(node.host.peer_id)

    theirs = announcement_doc("from-them.txt")
    await peer.command("publish", topic=TOPIC, data_b64=base64.b64encode(theirs).decode())
    with trio.fail_after(MAX_WAIT):
        delivered = await node.messages.receive()
    assert delivered.data == theirs
    assert str(delivered.author) == peer.peer_id
    assert str(delivered.received_from) == peer.peer_id
    ann = received_announcement(delivered)
    assert ann.name == "from-them.txt" and ann.size == 42
    assert node.pubsub.router.stats["invalid_signature"] == 0
