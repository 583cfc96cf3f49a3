"""A Node: repository + identity + host + the protocols running on it.

Today: identify, ping, pubsub and bitswap (serving every block in the repo; ``fetch``/``share``).
Services added later (DHT) are constructed in ``Node.__init__`` next to them, and start
long-running tasks in ``node.nursery``.

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
from typing import TYPE_CHECKING, Any

import trio
from multiaddr import Multiaddr

from .content.cid import CID
from .errors import FileshareError
from .identity.keys import PrivateKey, load_or_create_identity
from .identity.peerid import PeerId
from .net import addrs as _addrs
from .net.host import Host, open_host
from .protocols.bitswap.service import BitswapService
from .protocols.identify import IdentifyService
from .protocols.kad.service import KadMode, KadService
from .protocols.mdns.service import MdnsService
from .protocols.ping import PingService
from .protocols.pubsub.service import PubsubService
from .repo import Repo

if TYPE_CHECKING:
    from .content.ingest import ImportResult
    from .content.ingest import Progress as ImportProgress
    from .content.layout import Layout
    from .fetch import FetchResult

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

    def __init__(
        self, repo: Repo, host: Host, *, dht_mode: KadMode = "server", mdns: bool = False
    ) -> None:
        self.repo = repo
        self.host = host
        self.identify = IdentifyService(host)
        self.kad = KadService(host, repo, identify=self.identify, mode=dht_mode)
        self.ping = PingService(host)
        self.pubsub = PubsubService(host)
        self.bitswap = BitswapService(host, repo.blocks)  # serves every block in the repo
        self.mdns = MdnsService(host, enabled=mdns)  # LAN discovery (off unless asked for)

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    @property
    def nursery(self) -> trio.Nursery:
        return self.host.nursery

    def full_addrs(self) -> list[Multiaddr]:
        """Our dialable addresses, each ending in ``/p2p/<PeerId>`` (loopback first)."""
        return [_addrs.with_peer(a, self.peer_id) for a in self.host.advertised_addrs()]

    async def fetch(self, root: CID, out: Path | None = None, **options: Any) -> FetchResult:
        """Fetch the DAG under ``root`` into the store and, with ``out``, write the file there.

        ``options``: see ``fileshare.fetch.fetch_file`` (peers, on_progress, stall_timeout, ...).
        """
        from .fetch import fetch_blocks, fetch_file

        if out is None:
            options.pop("pin", None)
            return await fetch_blocks(self, root, **options)
        return await fetch_file(self, root, out, **options)

    async def share(
        self,
        path: Path,
        layout: Layout,
        *,
        name: str | None = None,
        announce: bool = True,
        progress: ImportProgress | None = None,
    ) -> ImportResult:
        """Import ``path`` as a shared file (served by bitswap) and announce it on pubsub."""
        from .content.ingest import import_file, layout_names

        result = await import_file(self.repo, path, layout, progress, name=name, shared=True)
        self.bitswap.blocks_added([result.root])
        self.kad.start_providing(result.root)  # the root only: reproviding stays cheap
        if announce:
            hash_name = layout_names(layout)[0]
            self.nursery.start_soon(
                self._announce, result.root, name or path.name, result.size, hash_name
            )
        return result

    async def _announce(self, root: CID, name: str, size: int, hash_name: str) -> None:
        from .protocols.pubsub.announce import announce_share

        try:
            await announce_share(self, root, name, size, hash_name)
        except FileshareError as exc:
            log.warning("could not announce %s: %s", root, exc)

    async def connect(self, addr: Multiaddr) -> None:
        """Dial ``addr``; failures are logged, not raised (for bootstrap peers)."""
        try:
            conn = await self.host.dial(addr)
        except FileshareError as exc:
            log.warning("could not connect to %s: %s", addr, exc)
            return
        log.info("connected to %s", conn.remote_peer)

    def write_daemon_info(self, extra: dict[str, Any] | None = None) -> None:
        """Record pid, PeerId and addresses so ``fileshare id`` can show them (plus ``extra``:
        the daemon's ``api`` and ``gateway`` URLs)."""
        info = {
            "pid": os.getpid(),
            "peer_id": str(self.peer_id),
            "addresses": [str(a) for a in self.full_addrs()],
            **(extra or {}),
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
    dht_mode: KadMode = "server",
    mdns: bool = False,
) -> AsyncIterator[Node]:
    """Open the repository, start the host and protocols, listen, dial ``peers`` (in background)."""
    repo = Repo.open(repo_path)
    try:
        if key is None:
            key = load_or_create_identity(repo.identity_path)
        async with open_host(key) as host:
            node = Node(repo, host, dht_mode=dht_mode, mdns=mdns)
            if listen:
                await host.listen(listen)
            for addr in peers:
                host.nursery.start_soon(node.connect, addr)
            yield node
    finally:
        repo.close()
