"""The /ipfs/kad/1.0.0 ``Message`` protobuf, hand-written and strictly validated.

Wire schema (libp2p kad-dht spec)::

    Message { type=1 (enum), key=2 (bytes), record=3 (Record), closerPeers=8 (repeated Peer),
              providerPeers=9 (repeated Peer), clusterLevelRaw=10 (int32) }
    Peer    { id=1 (bytes), addrs=2 (repeated bytes), connection=3 (enum) }
    Record  { key=1 (bytes), value=2 (bytes), timeReceived=5 (string) }

Decoding enforces the ``KAD_*`` limits in ``fileshare.limits`` (key length, peers per list, addrs
per peer, message size) and raises only ``DecodeError`` or ``LimitExceeded``. Fields at their
proto3 default are omitted when encoding. Unknown ``ConnectionType`` values read as NOT_CONNECTED.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ...content.cid import decode_multihash
from ...errors import DecodeError, LimitExceeded
from ...limits import (
    KAD_MAX_ADDR_BYTES,
    KAD_MAX_ADDRS_PER_PEER,
    KAD_MAX_CLOSER_PEERS,
    KAD_MAX_KEY,
    KAD_MAX_MESSAGE,
    KAD_MAX_PEER_ID,
    KAD_MAX_PROVIDER_PEERS,
    KAD_MAX_RECORD_VALUE,
    KAD_MAX_TIME_RECEIVED,
)
from ...wire.protobuf import (
    Writer,
    expect_bytes,
    expect_int,
    expect_str,
    iter_fields,
    to_int64,
)

PROTOCOL_ID = "/ipfs/kad/1.0.0"

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


class MessageType(IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer as carried in closerPeers/providerPeers: id bytes and binary multiaddrs."""

    id: bytes
    addrs: tuple[bytes, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    value: bytes
    time_received: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    key: bytes = b""
    record: Record | None = None
    closer_peers: tuple[Peer, ...] = ()
    provider_peers: tuple[Peer, ...] = ()
    cluster_level_raw: int = 0


def is_multihash(data: bytes) -> bool:
    """True if ``data`` is exactly one well-formed multihash (header lengths consistent)."""
    try:
        decode_multihash(data)
    except DecodeError:
        return False
    return True


# --- encoding ---


def _encode_peer(peer: Peer) -> bytes:
    w = Writer().bytes(1, peer.id)
    for addr in peer.addrs:
        w.bytes(2, addr)
    if peer.connection:
        w.uint(3, int(peer.connection))
    return w.finish()


def _encode_record(record: Record) -> bytes:
    w = Writer()
    if record.key:
        w.bytes(1, record.key)
    if record.value:
        w.bytes(2, record.value)
    if record.time_received:
        w.string(5, record.time_received)
    return w.finish()


def encode_message(msg: Message) -> bytes:
    """Serialize ``msg``; raises ``LimitExceeded`` if it breaks a limit we also enforce on input."""
    validate_message(msg)
    w = Writer()
    if msg.type:
        w.uint(1, int(msg.type))
    if msg.key:
        w.bytes(2, msg.key)
    if msg.record is not None:
        w.bytes(3, _encode_record(msg.record))
    for peer in msg.closer_peers:
        w.bytes(8, _encode_peer(peer))
    for peer in msg.provider_peers:
        w.bytes(9, _encode_peer(peer))
    if msg.cluster_level_raw:
        w.uint(10, msg.cluster_level_raw)
    data = w.finish()
    if len(data) > KAD_MAX_MESSAGE:
        raise LimitExceeded(f"kad message of {len(data)} bytes exceeds {KAD_MAX_MESSAGE}")
    return data


def _check_peer(peer: Peer) -> None:
    if not peer.id:
        raise DecodeError("kad peer without an id")
    if len(peer.id) > KAD_MAX_PEER_ID:
        raise LimitExceeded(f"kad peer id of {len(peer.id)} bytes exceeds {KAD_MAX_PEER_ID}")
    if not is_multihash(peer.id):
        raise DecodeError("kad peer id is not a multihash")
    if len(peer.addrs) > KAD_MAX_ADDRS_PER_PEER:
        raise LimitExceeded(f"kad peer with more than {KAD_MAX_ADDRS_PER_PEER} addrs")
    for addr in peer.addrs:
        if len(addr) > KAD_MAX_ADDR_BYTES:
            raise LimitExceeded(f"multiaddr of {len(addr)} bytes exceeds {KAD_MAX_ADDR_BYTES}")


def validate_message(msg: Message) -> None:
    """Check every limit; raises ``DecodeError`` or ``LimitExceeded``."""
    _check_fields(msg)
    for peer in msg.closer_peers:
        _check_peer(peer)
    for peer in msg.provider_peers:
        _check_peer(peer)


def _check_fields(msg: Message) -> None:
    """Every limit except the per-peer ones."""
    if len(msg.key) > KAD_MAX_KEY:
        raise LimitExceeded(f"kad key of {len(msg.key)} bytes exceeds {KAD_MAX_KEY}")
    if msg.record is not None:
        rec = msg.record
        if len(rec.key) > KAD_MAX_KEY:
            raise LimitExceeded(f"kad record key of {len(rec.key)} bytes exceeds {KAD_MAX_KEY}")
        if len(rec.value) > KAD_MAX_RECORD_VALUE:
            raise LimitExceeded(f"kad record value exceeds {KAD_MAX_RECORD_VALUE} bytes")
        if len(rec.time_received) > KAD_MAX_TIME_RECEIVED:
            raise LimitExceeded("kad record timeReceived too long")
    if len(msg.closer_peers) > KAD_MAX_CLOSER_PEERS:
        raise LimitExceeded(f"more than {KAD_MAX_CLOSER_PEERS} closer peers")
    if len(msg.provider_peers) > KAD_MAX_PROVIDER_PEERS:
        raise LimitExceeded(f"more than {KAD_MAX_PROVIDER_PEERS} provider peers")
    if not _INT32_MIN <= msg.cluster_level_raw <= _INT32_MAX:
        raise DecodeError("clusterLevelRaw outside int32")


# --- decoding ---


def _decode_peer(data: memoryview) -> Peer:
    peer_id = b""
    addrs: list[bytes] = []
    connection = ConnectionType.NOT_CONNECTED
    for field, wt, value in iter_fields(data):
        if field == 1:
            peer_id = expect_bytes(wt, value, "Peer.id")
            if len(peer_id) > KAD_MAX_PEER_ID:
                raise LimitExceeded(f"kad peer id exceeds {KAD_MAX_PEER_ID} bytes")
        elif field == 2:
            if len(addrs) >= KAD_MAX_ADDRS_PER_PEER:
                raise LimitExceeded(f"kad peer with more than {KAD_MAX_ADDRS_PER_PEER} addrs")
            addr = expect_bytes(wt, value, "Peer.addrs")
            if len(addr) > KAD_MAX_ADDR_BYTES:
                raise LimitExceeded(f"multiaddr exceeds {KAD_MAX_ADDR_BYTES} bytes")
            addrs.append(addr)
        elif field == 3:
            raw = expect_int(wt, value, "Peer.connection")
            connection = (
                ConnectionType(raw)
                if raw in ConnectionType._value2member_map_
                else ConnectionType.NOT_CONNECTED
            )
    peer = Peer(peer_id, tuple(addrs), connection)
    _check_peer(peer)
    return peer


def _decode_record(data: memoryview) -> Record:
    key = b""
    value = b""
    time_received = ""
    for field, wt, val in iter_fields(data):
        if field == 1:
            key = expect_bytes(wt, val, "Record.key")
        elif field == 2:
            value = expect_bytes(wt, val, "Record.value")
        elif field == 5:
            time_received = expect_str(wt, val, "Record.timeReceived")
    return Record(key, value, time_received)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse and validate one Message (without its length prefix)."""
    if len(data) > KAD_MAX_MESSAGE:
        raise LimitExceeded(f"kad message of {len(data)} bytes exceeds {KAD_MAX_MESSAGE}")
    mtype = 0
    key = b""
    record: Record | None = None
    closer: list[Peer] = []
    providers: list[Peer] = []
    cluster = 0
    for field, wt, value in iter_fields(data):
        if field == 1:
            mtype = expect_int(wt, value, "Message.type")
        elif field == 2:
            key = expect_bytes(wt, value, "Message.key")
            if len(key) > KAD_MAX_KEY:
                raise LimitExceeded(f"kad key of {len(key)} bytes exceeds {KAD_MAX_KEY}")
        elif field == 3:
            record = _decode_record(memoryview(expect_bytes(wt, value, "Message.record")))
        elif field == 8:
            if len(closer) >= KAD_MAX_CLOSER_PEERS:
                raise LimitExceeded(f"more than {KAD_MAX_CLOSER_PEERS} closer peers")
            closer.append(_decode_peer(memoryview(expect_bytes(wt, value, "closerPeers"))))
        elif field == 9:
            if len(providers) >= KAD_MAX_PROVIDER_PEERS:
                raise LimitExceeded(f"more than {KAD_MAX_PROVIDER_PEERS} provider peers")
            providers.append(_decode_peer(memoryview(expect_bytes(wt, value, "providerPeers"))))
        elif field == 10:
            cluster = to_int64(expect_int(wt, value, "Message.clusterLevelRaw"))
    if mtype not in MessageType._value2member_map_:
        raise DecodeError(f"unknown kad message type {mtype}")
    msg = Message(MessageType(mtype), key, record, tuple(closer), tuple(providers), cluster)
    _check_fields(msg)  # peers were checked as they were decoded
    return msg
