"""A Node: repository + identity + host + the protocols running on it.

Today: identify and ping. Services added later (DHT, bitswap, pubsub) are constructed in
``Node.__init__`` next to them, and start long-running tasks in ``node.nursery``.

    async with open_node(repo_path, listen=[parse("/ip4/127.0.0.1/tcp/0")]) as node:
        print(node.full_addrs())
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from multiaddr import Multiaddr

from .errors import FileshareError
from .identity.keys import PrivateKey, load_or_create_identity
from .identity.peerid import PeerId
from .net import addrs as _addrs
from .net.host import Host, open_host
from .protocols.identify import IdentifyService
from .protocols.ping import PingService
from .repo import Repo

log = logging.getLogger("fileshare.node")

DAEMON_INFO_FILE = "daemon.json"  # written by a running daemon: pid, PeerId, listen addresses


def load_identity(repo_path: Path) -> PrivateKey:
    """The repository's identity key, created (mode 0600) on first use."""
    repo = Repo.open(repo_path)
    try:
        return load_or_create_identity(repo.identity_path)
    finally:
        repo.close()


class Node:
    """The composed node. Build it with ``open_node``."""

    def __init__(self, repo: Repo, host: Host) -> None:
        self.repo = repo
        self.host = host
        self.identify = IdentifyService(host)
        self.ping = PingService(host)

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    @property
    def nursery(self) -> trio.Nursery:
        return self.host.nursery

    def full_addrs(self) -> list[Multiaddr]:
        """Our dialable addresses, each ending in ``/p2p/<PeerId>`` (loopback first)."""
        return [_addrs.with_peer(a, self.peer_id) for a in self.host.advertised_addrs()]

    async def connect(self, addr: Multiaddr) -> None:
        """Dial ``addr``; failures are logged, not raised (for bootstrap peers)."""
        try:
            conn = await self.host.dial(addr)
        except FileshareError as exc:
            log.warning("could not connect to %s: %s", addr, exc)
            return
        log.info("connected to %s", conn.remote_peer)

    def write_daemon_info(self) -> None:
        """Record pid, PeerId and addresses so ``fileshare id`` can show them."""
        info = {
            "pid": os.getpid(),
            "peer_id": str(self.peer_id),
            "addresses": [str(a) for a in self.full_addrs()],
        }
        path = self.repo.path / DAEMON_INFO_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
        tmp.replace(path)

    def remove_daemon_info(self) -> None:
        path = self.repo.path / DAEMON_INFO_FILE
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                path.unlink()


def read_daemon_addrs(repo: Path) -> list[str] | None:
    """Addresses of the daemon running on ``repo``, or None if none is running."""
    path = Path(repo).expanduser() / DAEMON_INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        pid = int(info["pid"])
        os.kill(pid, 0)
        return [str(a) for a in info["addresses"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@asynccontextmanager
async def open_node(
    repo_path: Path,
    *,
    listen: Sequence[Multiaddr] = (),
    peers: Sequence[Multiaddr] = (),
    key: PrivateKey | None = None,
) -> AsyncIterator[Node]:
    """Open the repository, start the host and protocols, listen, dial ``peers`` (in background)."""
    repo = Repo.open(repo_path)
    try:
        if key is None:
            key = load_or_create_identity(repo.identity_path)
        async with open_host(key) as host:
            node = Node(repo, host)
            if listen:
                await host.listen(listen)
            for addr in peers:
                host.nursery.start_soon(node.connect, addr)
            yield node
    finally:
        repo.close()
