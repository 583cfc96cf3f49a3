"""identify 1.0.0 (``/ipfs/id/1.0.0``) and receiving identify/push (``/ipfs/id/push/1.0.0``).

The codec (``IdentifyMessage.encode`` / ``decode_response``) is pure; ``IdentifyService`` runs the
exchange on every new connection (both directions), answers requests and fills the peer store.
Responses are uvarint-length-prefixed protobufs (several are merged, as protobuf allows); a bare
protobuf, as very old peers send, is accepted too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from multiaddr import Multiaddr

from .. import __version__
from ..errors import DecodeError, FileshareError, LimitExceeded
from ..identity.keys import PublicKey
from ..identity.peerid import PeerId
from ..limits import IDENTIFY_MAX_MESSAGE, IDENTIFY_TIMEOUT
from ..net import addrs as _addrs
from ..net.host import Connection, Host, NetStream
from ..wire.protobuf import Writer, expect_bytes, expect_str, iter_fields, length_prefixed
from ..wire.varint import decode_varint

IDENTIFY_PROTOCOL = "/ipfs/id/1.0.0"
IDENTIFY_PUSH_PROTOCOL = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
AGENT_VERSION = f"fileshare/{__version__}"

log = logging.getLogger("fileshare.protocols.identify")


@dataclass(frozen=True)
class IdentifyMessage:
    """The Identify protobuf. Multiaddrs stay binary here; ``listen_multiaddrs()`` parses them."""

    protocol_version: str | None = None
    agent_version: str | None = None
    public_key: bytes | None = None  # PublicKey protobuf
    listen_addrs: tuple[bytes, ...] = ()
    observed_addr: bytes | None = None
    protocols: tuple[str, ...] = ()

    def encode(self) -> bytes:
        w = Writer()
        if self.public_key is not None:
            w.bytes(1, self.public_key)
        for addr in self.listen_addrs:
            w.bytes(2, addr)
        for proto in self.protocols:
            w.string(3, proto)
        if self.observed_addr is not None:
            w.bytes(4, self.observed_addr)
        if self.protocol_version is not None:
            w.string(5, self.protocol_version)
        if self.agent_version is not None:
            w.string(6, self.agent_version)
        return w.finish()

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> IdentifyMessage:
        """Decode one protobuf Identify; unknown fields (e.g. signedPeerRecord) are skipped."""
        public_key: bytes | None = None
        observed: bytes | None = None
        protocol_version: str | None = None
        agent_version: str | None = None
        addrs: list[bytes] = []
        protocols: list[str] = []
        for number, wire_type, value in iter_fields(data):
            if number == 1:
                public_key = expect_bytes(wire_type, value, "identify.publicKey")
            elif number == 2:
                addrs.append(expect_bytes(wire_type, value, "identify.listenAddrs"))
            elif number == 3:
                protocols.append(expect_str(wire_type, value, "identify.protocols"))
            elif number == 4:
                observed = expect_bytes(wire_type, value, "identify.observedAddr")
            elif number == 5:
                protocol_version = expect_str(wire_type, value, "identify.protocolVersion")
            elif number == 6:
                agent_version = expect_str(wire_type, value, "identify.agentVersion")
        return cls(
            protocol_version=protocol_version,
            agent_version=agent_version,
            public_key=public_key,
            listen_addrs=tuple(addrs),
            observed_addr=observed,
            protocols=tuple(protocols),
        )

    def merge(self, later: IdentifyMessage) -> IdentifyMessage:
        """Protobuf merge: later scalars win, repeated fields concatenate."""
        return IdentifyMessage(
            protocol_version=self.protocol_version
            if later.protocol_version is None
            else later.protocol_version,
            agent_version=self.agent_version
            if later.agent_version is None
            else later.agent_version,
            public_key=self.public_key if later.public_key is None else later.public_key,
            listen_addrs=self.listen_addrs + later.listen_addrs,
            observed_addr=self.observed_addr
            if later.observed_addr is None
            else later.observed_addr,
            protocols=self.protocols + later.protocols,
        )

    def listen_multiaddrs(self) -> list[Multiaddr]:
        """The listen addresses that parse (invalid ones are skipped)."""
        out: list[Multiaddr] = []
        for raw in self.listen_addrs:
            try:
                out.append(_addrs.from_bytes(raw))
            except DecodeError:
                continue
        return out

    def observed_multiaddr(self) -> Multiaddr | None:
        if self.observed_addr is None:
            return None
        try:
            return _addrs.from_bytes(self.observed_addr)
        except DecodeError:
            return None

    def public_key_object(self) -> PublicKey | None:
        if self.public_key is None:
            return None
        try:
            return PublicKey.from_protobuf(self.public_key)
        except DecodeError:
            return None


def encode_response(msg: IdentifyMessage) -> bytes:
    return length_prefixed(msg.encode())


def decode_response(data: bytes | bytearray | memoryview) -> IdentifyMessage:
    """Decode a whole identify stream: length-prefixed message(s), else one bare protobuf."""
    view = memoryview(bytes(data))
    if not view:
        raise DecodeError("empty identify response")
    try:
        merged = IdentifyMessage()
        pos = 0
        while pos < len(view):
            length, pos = decode_varint(view, pos)
            if length > len(view) - pos:
                raise DecodeError("identify message runs past the end")
            merged = merged.merge(IdentifyMessage.decode(view[pos : pos + length]))
            pos += length
        return merged
    except DecodeError as framed_error:
        try:
            return IdentifyMessage.decode(view)
        except DecodeError:
            raise framed_error from None


async def read_all(stream: NetStream, limit: int) -> bytes:
    """Read a stream to its end; ``LimitExceeded`` past ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = await stream.receive_some(limit + 1 - total)
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > limit:
            raise LimitExceeded(f"message longer than {limit} bytes")
        parts.append(chunk)


class IdentifyService:
    """Serves identify, identifies every new connection, records results in the peer store."""

    def __init__(
        self,
        host: Host,
        *,
        agent_version: str = AGENT_VERSION,
        protocol_version: str = PROTOCOL_VERSION,
    ) -> None:
        self.host = host
        self.agent_version = agent_version
        self.protocol_version = protocol_version
        self.observed_addrs: list[Multiaddr] = []  # how peers see us (most recent first)
        self._identified: dict[PeerId, trio.Event] = {}
        host.set_stream_handler(IDENTIFY_PROTOCOL, self._handle_identify)
        host.set_stream_handler(IDENTIFY_PUSH_PROTOCOL, self._handle_push)
        host.on_connect(self._on_connect)
        host.on_disconnect(self._on_disconnect)

    def local_message(self, conn: Connection | None = None) -> IdentifyMessage:
        """Our Identify message, as sent on ``conn`` (observedAddr is its remote address)."""
        observed = conn.remote_addr.to_bytes() if conn and conn.remote_addr else None
        return IdentifyMessage(
            protocol_version=self.protocol_version,
            agent_version=self.agent_version,
            public_key=self.host.public_key.to_protobuf(),
            listen_addrs=tuple(a.to_bytes() for a in self.host.advertised_addrs()),
            observed_addr=observed,
            protocols=tuple(self.host.protocols()),
        )

    async def _handle_identify(self, stream: NetStream, conn: Connection) -> None:
        await stream.send_all(encode_response(self.local_message(conn)))

    async def _handle_push(self, stream: NetStream, conn: Connection) -> None:
        with trio.fail_after(IDENTIFY_TIMEOUT):
            data = await read_all(stream, IDENTIFY_MAX_MESSAGE)
        self._record(conn.remote_peer, decode_response(data), push=True)

    async def identify(self, target: Connection | PeerId) -> IdentifyMessage:
        """Ask the peer for its Identify message and record it in the peer store."""
        conn = target if isinstance(target, Connection) else await self.host.dial(target)
        with trio.fail_after(IDENTIFY_TIMEOUT):
            stream, _ = await conn.open_stream([IDENTIFY_PROTOCOL])
            try:
                data = await read_all(stream, IDENTIFY_MAX_MESSAGE)
            finally:
                await stream.aclose()
        msg = decode_response(data)
        self._record(conn.remote_peer, msg, push=False)
        return msg

    def _record(self, peer: PeerId, msg: IdentifyMessage, *, push: bool) -> None:
        store = self.host.peerstore
        key = msg.public_key_object()
        if key is not None:
            if peer.matches(key):
                store.set_public_key(peer, key)
            else:
                log.warning("identify from %s carries a public key of another peer; ignored", peer)
        listen = msg.listen_multiaddrs()
        if listen:
            store.add_addrs(peer, listen)
        if msg.protocols or not push:
            store.set_protocols(peer, msg.protocols)
        observed = msg.observed_multiaddr()
        store.set_metadata(
            peer,
            agent_version=msg.agent_version,
            protocol_version=msg.protocol_version,
            observed_addr=observed,
        )
        if observed is not None:
            if observed in self.observed_addrs:
                self.observed_addrs.remove(observed)
            self.observed_addrs.insert(0, observed)
            del self.observed_addrs[16:]

    def _event(self, peer: PeerId) -> trio.Event:
        event = self._identified.get(peer)
        if event is None:
            event = self._identified[peer] = trio.Event()
        return event

    async def wait_identified(self, peer: PeerId) -> None:
        """Return once the identify exchange on a connection to ``peer`` has finished (or failed)."""
        await self._event(peer).wait()

    async def _on_connect(self, conn: Connection) -> None:
        event = self._event(conn.remote_peer)
        if event.is_set():
            event = self._identified[conn.remote_peer] = trio.Event()
        try:
            await self.identify(conn)
        except (
            FileshareError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
        ) as exc:
            log.info("identify of %s failed: %s", conn.remote_peer, exc or type(exc).__name__)
        finally:
            event.set()

    async def _on_disconnect(self, conn: Connection) -> None:
        event = self._identified.get(conn.remote_peer)
        if event is not None and event.is_set() and not self.host.is_connected(conn.remote_peer):
            del self._identified[conn.remote_peer]
