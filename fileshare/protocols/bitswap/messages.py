"""The bitswap ``Message`` protobuf (1.0.0 / 1.1.0 / 1.2.0), hand-written and strictly validated.

Wire schema (IPFS bitswap spec)::

    Message  { wantlist=1 (Wantlist), blocks=2 (repeated bytes, 1.0.0), payload=3 (repeated Block),
               blockPresences=4 (repeated BlockPresence), pendingBytes=5 (int32) }
    Wantlist { entries=1 (repeated Entry), full=2 (bool) }
    Entry    { block=1 (CID bytes), priority=2 (int32), cancel=3 (bool), wantType=4 (Block=0, Have=1),
               sendDontHave=5 (bool) }
    Block    { prefix=1 (CID prefix), data=2 (bytes) }
    BlockPresence { cid=1 (CID bytes), type=2 (Have=0, DontHave=1) }

A payload carries no CID, only a prefix (version, codec, multihash code, digest length): the
receiver learns the block's CID by hashing the data (``Payload.cid``), which also verifies it.
Decoding enforces ``BITSWAP_MAX_MESSAGE``, ``MAX_BLOCK_SIZE`` and the per-message count limits and
raises only ``DecodeError`` or ``LimitExceeded``. Fields at their proto3 default are not encoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import IntEnum

import blake3

from ...content.cid import (
    BLAKE3,
    CID,
    DAG_PB,
    DIGEST_SIZES,
    SHA2_256,
    encode_multihash,
    hash_digest,
)
from ...errors import DecodeError, LimitExceeded
from ...limits import (
    BITSWAP_MAX_BLOCKS_PER_MESSAGE,
    BITSWAP_MAX_MESSAGE,
    BITSWAP_MAX_PRESENCES,
    BITSWAP_MAX_WANTLIST_ENTRIES,
    MAX_BLOCK_SIZE,
    MAX_CID_BYTES,
)
from ...wire.protobuf import Writer, expect_bytes, expect_int, iter_fields, to_int64
from ...wire.varint import decode_varint, encode_varint

PROTOCOL_1_0_0 = "/ipfs/bitswap/1.0.0"
PROTOCOL_1_1_0 = "/ipfs/bitswap/1.1.0"
PROTOCOL_1_2_0 = "/ipfs/bitswap/1.2.0"
PROTOCOLS = (PROTOCOL_1_2_0, PROTOCOL_1_1_0, PROTOCOL_1_0_0)  # in order of preference

INT32_MAX = (1 << 31) - 1
_INT32_MIN = -(1 << 31)
_MAX_PREFIX_BYTES = 40  # four varints


class WantType(IntEnum):
    BLOCK = 0
    HAVE = 1


class PresenceType(IntEnum):
    HAVE = 0
    DONT_HAVE = 1


@dataclass(frozen=True, slots=True)
class WantEntry:
    cid: CID
    priority: int = 1
    cancel: bool = False
    want_type: WantType = WantType.BLOCK
    send_dont_have: bool = False


@dataclass(frozen=True, slots=True)
class Wantlist:
    entries: tuple[WantEntry, ...] = ()
    full: bool = False


@dataclass(frozen=True, slots=True)
class Prefix:
    """Everything of a CID but the digest: how to hash a block to find its CID."""

    version: int
    codec: int
    hash_code: int
    digest_length: int

    @classmethod
    def of(cls, cid: CID) -> Prefix:
        return cls(cid.version, cid.codec, cid.hash_code, len(cid.digest))

    def encode(self) -> bytes:
        return b"".join(
            encode_varint(v) for v in (self.version, self.codec, self.hash_code, self.digest_length)
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Prefix:
        if len(data) > _MAX_PREFIX_BYTES:
            raise DecodeError("CID prefix too long")
        values: list[int] = []
        pos = 0
        for _ in range(4):
            value, pos = decode_varint(data, pos)
            values.append(value)
        if pos != len(data):
            raise DecodeError("trailing bytes after CID prefix")
        prefix = cls(*values)
        if prefix.version == 0:
            if (prefix.codec, prefix.hash_code, prefix.digest_length) != (DAG_PB, SHA2_256, 32):
                raise DecodeError("CIDv0 prefix must be dag-pb sha2-256/32")
        elif prefix.version != 1:
            raise DecodeError(f"unsupported CID version {prefix.version} in prefix")
        if prefix.digest_length > MAX_CID_BYTES:
            raise DecodeError("CID prefix digest length too large")
        return prefix

    def cid_for(self, data: bytes | bytearray | memoryview) -> CID:
        """Hash ``data`` as this prefix says and return its CID (``DecodeError`` if we cannot)."""
        if DIGEST_SIZES.get(self.hash_code) != self.digest_length:
            raise DecodeError(
                f"cannot hash a block with multihash 0x{self.hash_code:x}/{self.digest_length}"
            )
        mh = encode_multihash(self.hash_code, block_digest(self.hash_code, data))
        return CID(self.version, self.codec, mh)


def block_digest(hash_code: int, data: bytes | bytearray | memoryview) -> bytes:
    """``hash_digest`` for one block, on the calling thread only (blocks are hashed several at a
    time in worker threads; blake3's own multithreading costs more than it gains there)."""
    if hash_code == BLAKE3:
        return blake3.blake3(data).digest()
    if hash_code == SHA2_256:
        return hashlib.sha256(data).digest()
    return hash_digest(hash_code, data)


def block_matches(cid: CID, data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` hashes to ``cid`` (like ``CID.matches``, single-threaded)."""
    if cid.hash_code in (BLAKE3, SHA2_256):
        return block_digest(cid.hash_code, data) == cid.digest
    return cid.matches(data)


V0_PREFIX = Prefix(0, DAG_PB, SHA2_256, 32)


@dataclass(frozen=True, slots=True)
class Payload:
    """One block as sent since 1.1.0: its CID prefix and its bytes."""

    prefix: Prefix
    data: bytes | memoryview  # a received block is a view into its message (no copy)

    @classmethod
    def of(cls, cid: CID, data: bytes) -> Payload:
        return cls(Prefix.of(cid), data)

    def cid(self) -> CID:
        """The CID of ``data`` under ``prefix`` (hashes the data: O(len(data)))."""
        return self.prefix.cid_for(self.data)


@dataclass(frozen=True, slots=True)
class BlockPresence:
    cid: CID
    type: PresenceType


@dataclass(frozen=True, slots=True)
class Message:
    """One bitswap message. ``blocks`` is the 1.0.0 field (CIDv0 blocks); use ``payload`` otherwise."""

    wantlist: Wantlist | None = None
    blocks: tuple[bytes, ...] = ()
    payload: tuple[Payload, ...] = ()
    presences: tuple[BlockPresence, ...] = ()
    pending_bytes: int = 0

    def all_payloads(self) -> list[Payload]:
        """``payload`` plus the 1.0.0 ``blocks`` as CIDv0 payloads."""
        return [*self.payload, *(Payload(V0_PREFIX, b) for b in self.blocks)]

    def encode(self) -> bytes:
        return encode_message(self)


# --- sizes (what a field adds to an encoded message; used to pack responses) ---


def field_size(length: int) -> int:
    """Bytes a length-delimited field with a one-byte tag takes."""
    return 1 + len(encode_varint(length)) + length


def payload_size(prefix: Prefix, data_len: int) -> int:
    return field_size(field_size(len(prefix.encode())) + field_size(data_len))


def presence_size(presence: BlockPresence) -> int:
    inner = field_size(len(presence.cid.encode())) + (2 if presence.type else 0)
    return field_size(inner)


# --- encoding ---


def _encode_entry(entry: WantEntry) -> bytes:
    w = Writer().bytes(1, entry.cid.encode())
    if entry.priority:
        w.uint(2, entry.priority)
    if entry.cancel:
        w.bool(3, True)
    if entry.want_type:
        w.uint(4, int(entry.want_type))
    if entry.send_dont_have:
        w.bool(5, True)
    return w.finish()


def validate_message(msg: Message) -> None:
    """Check the limits we also enforce on input; raises ``LimitExceeded`` or ``DecodeError``."""
    entries = msg.wantlist.entries if msg.wantlist is not None else ()
    if len(entries) > BITSWAP_MAX_WANTLIST_ENTRIES:
        raise LimitExceeded(f"more than {BITSWAP_MAX_WANTLIST_ENTRIES} wantlist entries")
    for entry in entries:
        if not _INT32_MIN <= entry.priority <= INT32_MAX:
            raise DecodeError("want priority outside int32")
    if len(msg.blocks) + len(msg.payload) > BITSWAP_MAX_BLOCKS_PER_MESSAGE:
        raise LimitExceeded(f"more than {BITSWAP_MAX_BLOCKS_PER_MESSAGE} blocks in a message")
    if len(msg.presences) > BITSWAP_MAX_PRESENCES:
        raise LimitExceeded(f"more than {BITSWAP_MAX_PRESENCES} block presences")
    for data in (*msg.blocks, *(p.data for p in msg.payload)):
        if len(data) > MAX_BLOCK_SIZE:
            raise LimitExceeded(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
    if not _INT32_MIN <= msg.pending_bytes <= INT32_MAX:
        raise DecodeError("pendingBytes outside int32")


def _field_head(field: int, length: int) -> bytes:
    return encode_varint(field << 3 | 2) + encode_varint(length)


def _encode_parts(msg: Message) -> list[bytes | memoryview]:
    """The encoded message as pieces to join (block data is referenced, not copied)."""
    validate_message(msg)
    parts: list[bytes | memoryview] = []
    if msg.wantlist is not None:
        wl = Writer()
        for entry in msg.wantlist.entries:
            wl.bytes(1, _encode_entry(entry))
        if msg.wantlist.full:
            wl.bool(2, True)
        parts.append(Writer().bytes(1, wl.finish()).finish())
    for block in msg.blocks:
        parts += (_field_head(2, len(block)), block)
    for p in msg.payload:
        prefix = p.prefix.encode()
        head = _field_head(1, len(prefix)) + prefix + _field_head(2, len(p.data))
        parts += (_field_head(3, len(head) + len(p.data)), head, p.data)
    tail = Writer()
    for presence in msg.presences:
        pw = Writer().bytes(1, presence.cid.encode())
        if presence.type:
            pw.uint(2, int(presence.type))
        tail.bytes(4, pw.finish())
    if msg.pending_bytes:
        tail.uint(5, msg.pending_bytes)
    parts.append(tail.finish())
    size = sum(len(x) for x in parts)
    if size > BITSWAP_MAX_MESSAGE:
        raise LimitExceeded(f"bitswap message of {size} bytes exceeds {BITSWAP_MAX_MESSAGE}")
    return parts


def encode_message(msg: Message) -> bytes:
    """Serialize ``msg`` (no length prefix); raises ``LimitExceeded`` past any bitswap limit."""
    return b"".join(_encode_parts(msg))


def encode_frame(msg: Message) -> bytes:
    """``msg`` with its uvarint length prefix, as sent on a stream (one copy of the block data)."""
    parts = _encode_parts(msg)
    return b"".join([encode_varint(sum(len(x) for x in parts)), *parts])


# --- decoding ---


def _decode_cid(value: bytes) -> CID:
    if len(value) > MAX_CID_BYTES:
        raise LimitExceeded("CID too long")
    return CID.decode(value)


def _decode_entry(data: memoryview) -> WantEntry:
    cid: CID | None = None
    priority = 0  # proto3: absent is 0 (senders should use >= 1)
    cancel = False
    want_type = 0
    send_dont_have = False
    for field, wt, value in iter_fields(data):
        if field == 1:
            cid = _decode_cid(expect_bytes(wt, value, "Entry.block"))
        elif field == 2:
            priority = to_int64(expect_int(wt, value, "Entry.priority"))
            if not _INT32_MIN <= priority <= INT32_MAX:
                raise DecodeError("want priority outside int32")
        elif field == 3:
            cancel = expect_int(wt, value, "Entry.cancel") != 0
        elif field == 4:
            want_type = expect_int(wt, value, "Entry.wantType")
        elif field == 5:
            send_dont_have = expect_int(wt, value, "Entry.sendDontHave") != 0
    if cid is None:
        raise DecodeError("wantlist entry without a CID")
    if want_type not in WantType._value2member_map_:
        raise DecodeError(f"unknown wantType {want_type}")
    return WantEntry(cid, priority, cancel, WantType(want_type), send_dont_have)


def _decode_wantlist(data: memoryview) -> Wantlist:
    entries: list[WantEntry] = []
    full = False
    for field, wt, value in iter_fields(data):
        if field == 1:
            if len(entries) >= BITSWAP_MAX_WANTLIST_ENTRIES:
                raise LimitExceeded(f"more than {BITSWAP_MAX_WANTLIST_ENTRIES} wantlist entries")
            entries.append(_decode_entry(memoryview(expect_bytes(wt, value, "Wantlist.entries"))))
        elif field == 2:
            full = expect_int(wt, value, "Wantlist.full") != 0
    return Wantlist(tuple(entries), full)


def _check_block(data: bytes | memoryview) -> None:
    if len(data) > MAX_BLOCK_SIZE:
        raise LimitExceeded(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")


def _decode_payload(data: memoryview) -> Payload:
    prefix: Prefix | None = None
    block: bytes | memoryview = b""
    for field, wt, value in iter_fields(data):
        if field == 1:
            prefix = Prefix.decode(expect_bytes(wt, value, "Block.prefix"))
        elif field == 2:
            if not isinstance(value, memoryview):
                raise DecodeError("Block.data: expected a length-delimited field")
            _check_block(value)
            block = value
    if prefix is None:
        raise DecodeError("payload block without a CID prefix")
    return Payload(prefix, block)


def _decode_presence(data: memoryview) -> BlockPresence:
    cid: CID | None = None
    kind = 0
    for field, wt, value in iter_fields(data):
        if field == 1:
            cid = _decode_cid(expect_bytes(wt, value, "BlockPresence.cid"))
        elif field == 2:
            kind = expect_int(wt, value, "BlockPresence.type")
    if cid is None:
        raise DecodeError("block presence without a CID")
    if kind not in PresenceType._value2member_map_:
        raise DecodeError(f"unknown block presence type {kind}")
    return BlockPresence(cid, PresenceType(kind))


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse and validate one Message (without its length prefix)."""
    if len(data) > BITSWAP_MAX_MESSAGE:
        raise LimitExceeded(f"bitswap message of {len(data)} bytes exceeds {BITSWAP_MAX_MESSAGE}")
    wantlist: Wantlist | None = None
    blocks: list[bytes] = []
    payload: list[Payload] = []
    presences: list[BlockPresence] = []
    pending = 0
    for field, wt, value in iter_fields(data):
        if field == 1:
            if wantlist is not None:
                raise DecodeError("bitswap message with two wantlists")
            wantlist = _decode_wantlist(memoryview(expect_bytes(wt, value, "Message.wantlist")))
        elif field in (2, 3):
            if len(blocks) + len(payload) >= BITSWAP_MAX_BLOCKS_PER_MESSAGE:
                raise LimitExceeded(f"more than {BITSWAP_MAX_BLOCKS_PER_MESSAGE} blocks")
            if field == 2:
                if isinstance(value, memoryview):
                    _check_block(value)
                blocks.append(expect_bytes(wt, value, "Message.blocks"))
            else:
                payload.append(_decode_payload(memoryview(expect_bytes(wt, value, "payload"))))
        elif field == 4:
            if len(presences) >= BITSWAP_MAX_PRESENCES:
                raise LimitExceeded(f"more than {BITSWAP_MAX_PRESENCES} block presences")
            presences.append(_decode_presence(memoryview(expect_bytes(wt, value, "presence"))))
        elif field == 5:
            pending = to_int64(expect_int(wt, value, "Message.pendingBytes"))
            if not _INT32_MIN <= pending <= INT32_MAX:
                raise DecodeError("pendingBytes outside int32")
    return Message(wantlist, tuple(blocks), tuple(payload), tuple(presences), pending)
