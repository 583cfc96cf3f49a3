"""In-memory peer store: known addresses, public keys, protocols and identify metadata per peer.

Bounded: at most ``PEERSTORE_MAX_PEERS`` peers (the least recently updated one is evicted first)
and ``PEERSTORE_MAX_ADDRS`` addresses / ``PEERSTORE_MAX_PROTOCOLS`` protocols per peer.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from multiaddr import Multiaddr

from ..identity.keys import PublicKey
from ..identity.peerid import PeerId
from ..limits import PEERSTORE_MAX_ADDRS, PEERSTORE_MAX_PEERS, PEERSTORE_MAX_PROTOCOLS
from . import addrs as _addrs


@dataclass
class PeerInfo:
    """What we know about one peer."""

    peer_id: PeerId
    addrs: list[Multiaddr] = field(default_factory=list)
    public_key: PublicKey | None = None
    protocols: frozenset[str] = frozenset()
    agent_version: str | None = None
    protocol_version: str | None = None
    observed_addr: Multiaddr | None = None  # how the peer saw us
    updated_at: float = field(default_factory=time.time)


class PeerStore:
    """Peer metadata keyed by PeerId; every method is synchronous and cheap."""

    def __init__(self, max_peers: int = PEERSTORE_MAX_PEERS) -> None:
        self._peers: dict[PeerId, PeerInfo] = {}
        self.max_peers = max_peers

    def _entry(self, peer: PeerId) -> PeerInfo:
        info = self._peers.pop(peer, None)
        if info is None:
            info = PeerInfo(peer)
            while len(self._peers) >= self.max_peers:
                del self._peers[next(iter(self._peers))]
        info.updated_at = time.time()
        self._peers[peer] = info  # re-insert: dict order is least-recently-updated first
        return info

    def get(self, peer: PeerId) -> PeerInfo | None:
        return self._peers.get(peer)

    def peers(self) -> list[PeerId]:
        return list(self._peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def add_addrs(self, peer: PeerId, addrs: Iterable[Multiaddr]) -> None:
        """Remember transport addresses for ``peer`` (a ``/p2p`` suffix is stripped; newest first)."""
        info = self._entry(peer)
        for addr in addrs:
            transport, named = _addrs.split_peer(addr)
            if transport is None or (named is not None and named != peer):
                continue
            if transport in info.addrs:
                info.addrs.remove(transport)
            info.addrs.insert(0, transport)
        del info.addrs[PEERSTORE_MAX_ADDRS:]

    def addrs(self, peer: PeerId) -> list[Multiaddr]:
        info = self._peers.get(peer)
        return list(info.addrs) if info else []

    def set_public_key(self, peer: PeerId, key: PublicKey) -> None:
        """Store ``key`` if it is the key ``peer`` is derived from (otherwise ignore it)."""
        if peer.matches(key):
            self._entry(peer).public_key = key

    def public_key(self, peer: PeerId) -> PublicKey | None:
        info = self._peers.get(peer)
        return info.public_key if info else None

    def set_protocols(self, peer: PeerId, protocols: Iterable[str]) -> None:
        self._entry(peer).protocols = frozenset(list(protocols)[:PEERSTORE_MAX_PROTOCOLS])

    def protocols(self, peer: PeerId) -> frozenset[str]:
        info = self._peers.get(peer)
        return info.protocols if info else frozenset()

    def supports(self, peer: PeerId, protocol: str) -> bool:
        return protocol in self.protocols(peer)

    def set_metadata(
        self,
        peer: PeerId,
        *,
        agent_version: str | None = None,
        protocol_version: str | None = None,
        observed_addr: Multiaddr | None = None,
    ) -> None:
        """Update identify metadata; None leaves a field unchanged."""
        info = self._entry(peer)
        if agent_version is not None:
            info.agent_version = agent_version
        if protocol_version is not None:
            info.protocol_version = protocol_version
        if observed_addr is not None:
            info.observed_addr = observed_addr

    def remove(self, peer: PeerId) -> None:
        self._peers.pop(peer, None)
