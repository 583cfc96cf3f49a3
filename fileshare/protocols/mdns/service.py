"""The trio driver of mDNS discovery: one UDP socket on port 5353, queries, answers, dials.

``MdnsService(host)`` starts a task in the host's nursery. It stays dormant (no socket, no
traffic) while the host has no announceable address (see ``core.announceable``: a node that
listens only on loopback never touches the LAN). Once one appears it:

- binds a UDP socket to ``0.0.0.0:5353`` (SO_REUSEADDR, and SO_REUSEPORT where available) and
  joins ``224.0.0.251`` on each interface that carries one of our announced IPv4 addresses
  (``IP_ADD_MEMBERSHIP`` with that address), multicast TTL 255, loopback on;
- sends a query and an announcement on each of those interfaces, then queries 1, 2, 4, ...
  seconds apart up to one every ``interval`` seconds (RFC 6762 s5.2), re-reading our addresses
  every ``MDNS_ADDR_REFRESH`` seconds (a change restarts the sequence);
- answers ``_p2p._udp.local PTR`` queries after a random 20-120 ms delay (rate-limited);
- for every peer in a response: adds its addresses to the peer store and, if not connected,
  dials it (at most ``MDNS_MAX_CONCURRENT_DIALS`` at once, each peer at most once per
  ``MDNS_REDIAL_INTERVAL``; at most ``MDNS_MAX_PEERS`` discovered peers are remembered).

IPv6 (``ff02::fb``) is not used; IPv6 listen addresses are still announced in the TXT records.
Log lines (logger ``fileshare.mdns``, INFO): ``mdns: discovered <PeerId> at <addrs>`` and
``mdns: connected to <PeerId>``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import random
import socket

import trio
from multiaddr import Multiaddr

from ...errors import FileshareError
from ...identity.peerid import PeerId
from ...limits import (
    MDNS_ADDR_REFRESH,
    MDNS_IDLE_POLL,
    MDNS_MAX_CONCURRENT_DIALS,
    MDNS_MAX_MESSAGE,
    MDNS_MAX_PEERS,
    MDNS_QUERY_INTERVAL,
    MDNS_REDIAL_INTERVAL,
    MDNS_RESPONSE_DELAY,
)
from ...net import addrs as _addrs
from ...net.host import Host
from .core import MDNS_GROUP_V4, MDNS_PORT, DiscoveryTable, MdnsCore, Reply

__all__ = ["MdnsService"]

log = logging.getLogger("fileshare.mdns")


def _ipv4_of(addrs: list[Multiaddr]) -> list[str]:
    """The IPv4 hosts of ``addrs`` (in order, without duplicates)."""
    out: list[str] = []
    for addr in addrs:
        with contextlib.suppress(FileshareError, ValueError):
            host, _port, family = _addrs.tcp_endpoint(addr)
            if family == socket.AF_INET and str(ipaddress.IPv4Address(host)) not in out:
                out.append(str(ipaddress.IPv4Address(host)))
    return out


class MdnsService:
    """libp2p mDNS discovery for ``host`` (``enabled=False`` makes it do nothing at all)."""

    def __init__(
        self,
        host: Host,
        *,
        interval: float = MDNS_QUERY_INTERVAL,
        enabled: bool = True,
        port: int = MDNS_PORT,
        group: str = MDNS_GROUP_V4,
        max_peers: int = MDNS_MAX_PEERS,
        redial_interval: float = MDNS_REDIAL_INTERVAL,
        dial: bool = True,
    ) -> None:
        self.host = host
        self.interval = interval
        self.enabled = enabled
        self.port = port
        self.group = group
        self.dial = dial
        self.core = MdnsCore(host.peer_id)
        self.table = DiscoveryTable(max_peers, redial_interval)
        self._sock: trio.socket.SocketType | None = None
        self._interfaces: list[str] = []  # local IPv4 addresses we joined the group on
        self._dialing = 0
        self._started = trio.Event()
        if enabled:
            host.nursery.start_soon(self._run)

    @property
    def active(self) -> bool:
        """True once the socket is open (we have something to announce)."""
        return self._sock is not None

    @property
    def interfaces(self) -> list[str]:
        """Local IPv4 addresses whose interfaces we send and listen on."""
        return list(self._interfaces)

    def discovered(self) -> list[PeerId]:
        """Peers seen in mDNS responses (least recently seen first)."""
        return self.table.peers()

    async def wait_active(self) -> None:
        await self._started.wait()

    # --- main loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await self._loop(nursery)
        finally:
            if self._sock is not None:
                self._sock.close()

    async def _loop(self, nursery: trio.Nursery) -> None:
        next_query = 0.0
        backoff = 1.0  # RFC 6762 s5.2: queries 1 s apart at first, then doubling up to interval
        while True:
            now = trio.current_time()
            try:
                changed = await self._refresh()
            except OSError as exc:
                log.warning("mdns: discovery disabled: %s", exc)
                return
            if self._sock is None:
                await trio.sleep(MDNS_IDLE_POLL)
                continue
            if not self._started.is_set():
                self._started.set()
                nursery.start_soon(self._receive_loop, self._sock, nursery)
            if changed:
                backoff = 1.0
            if changed or now >= next_query:
                await self._send_multicast(self.core.query())
                announcement = self.core.announcement(now)
                if changed and announcement is not None:
                    await self._send_multicast(announcement)
                next_query = now + min(backoff, self.interval)
                backoff *= 2
            await trio.sleep(max(0.0, min(MDNS_ADDR_REFRESH, next_query - now)))

    async def _refresh(self) -> bool:
        """Re-read our addresses; open the socket / join new interfaces. True if they changed."""
        self.core.set_addrs(self.host.advertised_addrs())
        wanted = _ipv4_of(self.core.addrs)
        if wanted == self._interfaces:
            return False
        if wanted and self._sock is None:
            self._sock = await self._open_socket()
        for local in wanted:
            if local not in self._interfaces and self._sock is not None:
                self._join(self._sock, local)
        self._interfaces = wanted
        log.debug("mdns: announcing %s on %s", self.core.addrs, wanted)
        return True

    async def _open_socket(self) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            await sock.bind(("0.0.0.0", self.port))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        except BaseException:
            sock.close()
            raise
        log.debug("mdns: listening on udp/%d", self.port)
        return sock

    def _join(self, sock: trio.socket.SocketType, local: str) -> None:
        mreq = socket.inet_aton(self.group) + socket.inet_aton(local)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:  # already joined there
                log.info("mdns: cannot join %s on %s: %s", self.group, local, exc)

    async def _send_multicast(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        for local in self._interfaces:
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
                await sock.sendto(data, (self.group, self.port))
            except OSError as exc:
                log.debug("mdns: send on %s failed: %s", local, exc)

    # --- receiving -----------------------------------------------------------------------------

    async def _receive_loop(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                data, source = await sock.recvfrom(MDNS_MAX_MESSAGE + 1)
            except OSError as exc:
                log.debug("mdns: receive failed: %s", exc)
                await trio.sleep(0.1)
                continue
            try:
                handled = self.core.handle_datagram(data, int(source[1]), trio.current_time())
            except Exception:  # a bug here must not take the host down with it
                log.exception("mdns: failed to handle a datagram from %s", source[0])
                continue
            if handled.reply is not None:
                nursery.start_soon(self._reply, handled.reply, (str(source[0]), int(source[1])))
            for peer, maddrs in handled.discovered.items():
                self._discovered(peer, maddrs, nursery)

    async def _reply(self, reply: Reply, source: tuple[str, int]) -> None:
        await trio.sleep_until(max(reply.at, trio.current_time()))
        await trio.sleep(random.uniform(*MDNS_RESPONSE_DELAY))
        if not reply.unicast:
            await self._send_multicast(reply.data)
            return
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                await sock.sendto(reply.data, source)

    def _discovered(self, peer: PeerId, maddrs: list[Multiaddr], nursery: trio.Nursery) -> None:
        now = trio.current_time()
        if self.table.observe(peer, maddrs, now):
            log.info("mdns: discovered %s at %s", peer, " ".join(str(a) for a in maddrs))
        self.host.peerstore.add_addrs(peer, maddrs)
        if not self.dial or self.host.is_connected(peer):
            return
        if self._dialing >= MDNS_MAX_CONCURRENT_DIALS or not self.table.take_dial(peer, now):
            return
        self._dialing += 1
        nursery.start_soon(self._dial, peer, self.table.addrs(peer))

    async def _dial(self, peer: PeerId, maddrs: list[Multiaddr]) -> None:
        try:
            await self.host.dial(peer, maddrs)
        except FileshareError as exc:
            log.info("mdns: could not connect to %s: %s", peer, exc)
        else:
            log.info("mdns: connected to %s", peer)
        finally:
            self._dialing -= 1
