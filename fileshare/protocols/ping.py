"""ping 1.0.0 (``/ipfs/ping/1.0.0``): 32 random bytes, echoed; the dialler measures the RTT.

The server echoes up to ``PING_MAX_PER_STREAM`` payloads per stream, accepts at most
``PING_MAX_INBOUND_STREAMS`` concurrent streams per peer and drops a stream idle for
``PING_IDLE_TIMEOUT`` seconds.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from multiaddr import Multiaddr

from ..errors import ProtocolError
from ..identity.peerid import PeerId
from ..limits import (
    PING_IDLE_TIMEOUT,
    PING_MAX_INBOUND_STREAMS,
    PING_MAX_PER_STREAM,
    PING_TIMEOUT,
)
from ..net.host import Connection, Host, NetStream

PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_SIZE = 32

log = logging.getLogger("fileshare.protocols.ping")


async def _read_payload(stream: NetStream) -> bytes | None:
    """One 32-byte payload, or None on a clean end of stream before any byte of it."""
    buf = b""
    while len(buf) < PING_SIZE:
        chunk = await stream.receive_some(PING_SIZE - len(buf))
        if not chunk:
            if buf:
                raise ProtocolError("ping stream ended inside a payload")
            return None
        buf += chunk
    return buf


class PingService:
    """Answers pings; ``open_ping`` / ``ping`` send them."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._inbound: dict[PeerId, int] = {}
        host.set_stream_handler(PING_PROTOCOL, self._handle)

    async def _handle(self, stream: NetStream, conn: Connection) -> None:
        peer = conn.remote_peer
        if self._inbound.get(peer, 0) >= PING_MAX_INBOUND_STREAMS:
            log.info("refusing ping stream from %s: too many concurrent ping streams", peer)
            await stream.reset()
            return
        self._inbound[peer] = self._inbound.get(peer, 0) + 1
        try:
            for _ in range(PING_MAX_PER_STREAM):
                with trio.move_on_after(PING_IDLE_TIMEOUT) as idle:
                    payload = await _read_payload(stream)
                if idle.cancelled_caught or payload is None:
                    return
                await stream.send_all(payload)
        finally:
            left = self._inbound[peer] - 1
            if left:
                self._inbound[peer] = left
            else:
                del self._inbound[peer]


class PingSession:
    """One outbound ping stream; ``ping()`` may be called repeatedly."""

    def __init__(self, stream: NetStream) -> None:
        self.stream = stream
        self.peer = stream.remote_peer

    async def ping(self, timeout: float = PING_TIMEOUT) -> float:
        """Send one payload; return the round-trip time in seconds."""
        payload = secrets.token_bytes(PING_SIZE)
        with trio.fail_after(timeout):
            start = trio.current_time()
            await self.stream.send_all(payload)
            echo = await _read_payload(self.stream)
            rtt = trio.current_time() - start
        if echo is None:
            raise ProtocolError(f"{self.peer} closed the ping stream")
        if echo != payload:
            raise ProtocolError(f"{self.peer} echoed a different ping payload")
        return rtt


@asynccontextmanager
async def open_ping(host: Host, peer: PeerId | Multiaddr) -> AsyncIterator[PingSession]:
    """Dial ``peer`` if needed and open a ping stream for the duration of the block."""
    stream, _ = await host.new_stream(peer, [PING_PROTOCOL])  # dial and negotiation are bounded
    try:
        yield PingSession(stream)
    finally:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await stream.send_eof()
                await stream.aclose()
            except Exception:
                await stream.reset()


async def ping(host: Host, peer: PeerId | Multiaddr, count: int = 1) -> list[float]:
    """Ping ``count`` times over one stream; RTTs in seconds."""
    async with open_ping(host, peer) as session:
        return [await session.ping() for _ in range(count)]
