"""The pointer announcing a folder snapshot on the folder's gossipsub topic.

A full snapshot can exceed the pubsub message limit, so the topic carries a small pointer; the
signed snapshot bytes are stored as a UnixFS file and served by bitswap::

    message Pointer {
      uint32 format = 1;              // 1
      bytes folder = 2;               // folder id
      bytes snapshot = 3;             // CID of the signed snapshot bytes (a UnixFS file)
      uint64 size = 4;                // length of the signed snapshot bytes
      bytes root = 5;                 // CID of the snapshot's UnixFS directory
      repeated Counter version = 6;   // the folder version vector of the snapshot
      repeated string addrs = 7;      // the announcer's full multiaddrs
    }

``decode_pointer`` checks every field and raises only ``DecodeError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from multiaddr import Multiaddr

from ..content.cid import CID
from ..errors import DecodeError, LimitExceeded
from ..limits import (
    ANNOUNCE_MAX_ADDR_LENGTH,
    SYNC_MAX_INVITE_ADDRS,
    SYNC_MAX_POINTER_BYTES,
    SYNC_MAX_SNAPSHOT_BYTES,
)
from ..net import addrs as _addrs
from ..wire.protobuf import LEN, VARINT, FieldValue, Writer, iter_fields
from .snapshot import MAX_FOLDER_ID_BYTES, _counters, _decode_version
from .version import Version

POINTER_FORMAT = 1
_SIGNED_SLACK = 4096  # bytes of envelope around the snapshot body (key + signature)
_MAX_CID_BYTES = 128


@dataclass(frozen=True, slots=True)
class Pointer:
    folder: bytes
    snapshot: CID
    size: int
    root: CID
    version: Version
    addrs: tuple[Multiaddr, ...] = ()


def encode_pointer(p: Pointer) -> bytes:
    w = Writer().uint(1, POINTER_FORMAT).bytes(2, p.folder).bytes(3, p.snapshot.encode())
    w.uint(4, p.size).bytes(5, p.root.encode())
    _counters(w, 6, p.version)
    for a in p.addrs[:SYNC_MAX_INVITE_ADDRS]:
        w.string(7, str(a))
    data = w.finish()
    if len(data) > SYNC_MAX_POINTER_BYTES:
        raise LimitExceeded(f"pointer exceeds {SYNC_MAX_POINTER_BYTES} bytes")
    return data


def _field_bytes(wire: int, value: FieldValue, what: str, limit: int) -> bytes:
    if wire != LEN or isinstance(value, int):
        raise DecodeError(f"pointer: {what} must be length-delimited")
    if len(value) > limit:
        raise DecodeError(f"pointer: {what} too long")
    return bytes(value)


def decode_pointer(data: bytes | bytearray | memoryview) -> Pointer:
    """Parse and check a pointer; raises only ``DecodeError``."""
    if len(data) > SYNC_MAX_POINTER_BYTES:
        raise DecodeError(f"pointer exceeds {SYNC_MAX_POINTER_BYTES} bytes")
    fmt, size = 0, -1
    folder: bytes | None = None
    snapshot: CID | None = None
    root: CID | None = None
    counters: list[bytes] = []
    addrs: list[Multiaddr] = []
    for fnum, wire, value in iter_fields(data):
        if fnum in (1, 4):
            if wire != VARINT or not isinstance(value, int):
                raise DecodeError(f"pointer: field {fnum} must be a varint")
            if fnum == 1:
                fmt = value
            else:
                size = value
        elif fnum == 2:
            folder = _field_bytes(wire, value, "folder", MAX_FOLDER_ID_BYTES)
        elif fnum == 3:
            snapshot = CID.decode(_field_bytes(wire, value, "snapshot CID", _MAX_CID_BYTES))
        elif fnum == 5:
            root = CID.decode(_field_bytes(wire, value, "root CID", _MAX_CID_BYTES))
        elif fnum == 6:
            counters.append(_field_bytes(wire, value, "version", SYNC_MAX_POINTER_BYTES))
        elif fnum == 7:
            if len(addrs) >= SYNC_MAX_INVITE_ADDRS:
                raise DecodeError(f"pointer: more than {SYNC_MAX_INVITE_ADDRS} addresses")
            raw = _field_bytes(wire, value, "address", ANNOUNCE_MAX_ADDR_LENGTH)
            try:
                addrs.append(_addrs.parse(raw.decode("utf-8")))
            except UnicodeDecodeError:
                raise DecodeError("pointer: address is not UTF-8") from None
        else:
            raise DecodeError(f"pointer: unknown field {fnum}")
    if fmt != POINTER_FORMAT:
        raise DecodeError(f"pointer: unsupported format {fmt}")
    if folder is None or not folder or snapshot is None or root is None:
        raise DecodeError("pointer: missing folder, snapshot or root")
    if not 0 < size <= SYNC_MAX_SNAPSHOT_BYTES + _SIGNED_SLACK:
        raise DecodeError(f"pointer: snapshot size {size} out of range")
    return Pointer(folder, snapshot, size, root, _decode_version(counters), tuple(addrs))
