"""Our side of the DHT interop tests: an in-process KadService node (server mode) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import trio

from fileshare.content.cid import CID, RAW, SHA2_256
from fileshare.identity.keys import PrivateKey
from fileshare.net import addrs
from fileshare.net.host import open_host
from fileshare.protocols.identify import IdentifyService
from fileshare.protocols.kad.service import KadMode, KadService
from fileshare.protocols.ping import PingService
from fileshare.repo import Repo

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


@asynccontextmanager
async def our_dht_node(path: Path, mode: KadMode = "server") -> AsyncIterator[KadService]:
    repo = Repo.open(path)
    try:
        async with open_host(PrivateKey.generate(), listen=[addrs.parse(LOOPBACK)]) as host:
            PingService(host)  # js-libp2p pings a new DHT contact before adding it
            yield KadService(host, repo, identify=IdentifyService(host), mode=mode)
    finally:
        repo.close()


def full_addr(kad: KadService) -> str:
    return f"{kad.host.listen_addrs()[0]}/p2p/{kad.host.peer_id}"


def sha256_cid(text: str) -> CID:
    """A CIDv1 raw sha2-256 CID (every implementation hashes sha2-256)."""
    return CID.from_data(RAW, text.encode(), SHA2_256)


async def our_providers(
    kad: KadService, cid: CID, timeout: float = 20
) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    with trio.move_on_after(timeout):
        async with aclosing(kad.find_providers(cid, timeout=timeout)) as found:
            async for peer, maddrs in found:
                out.append((str(peer), [str(a) for a in maddrs]))
    return out


async def wait_until_in_table(kad: KadService, peer_id: str, timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while peer_id not in {str(p) for p, _ in kad.peers()}:
            await trio.sleep(0.05)
