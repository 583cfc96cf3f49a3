"""CARv1 (Content Addressable aRchive) writing, and strict reading for tests and tools.

A CARv1 is ``varint(len(header)) header`` then, per block, ``varint(len(cid) + len(data)) cid
data``. The header is the DAG-CBOR map ``{"roots": [CID, ...], "version": 1}``; a CID in DAG-CBOR
is tag 42 around a byte string holding 0x00 then the binary CID. CIDv0 blocks are written as the
bare multihash, as CIDv0 is encoded everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..content.cid import CID
from ..errors import DecodeError
from ..limits import CAR_MAX_HEADER_BYTES, CAR_MAX_ROOTS, MAX_BLOCK_SIZE, MAX_CID_BYTES
from ..wire.varint import decode_varint, encode_varint

CAR_VERSION = 1
CID_TAG = 42
MAX_SECTION = MAX_BLOCK_SIZE + MAX_CID_BYTES
_MAX_DEPTH = 8


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | extra]) + value.to_bytes(size, "big")
    raise ValueError("CBOR integer too large")


def _cbor_text(text: str) -> bytes:
    data = text.encode()
    return _cbor_head(3, len(data)) + data


def _cbor_cid(cid: CID) -> bytes:
    data = b"\x00" + cid.encode()
    return _cbor_head(6, CID_TAG) + _cbor_head(2, len(data)) + data


def encode_header(roots: Sequence[CID]) -> bytes:
    """The length-prefixed CARv1 header naming ``roots``."""
    body = (
        _cbor_head(5, 2)  # DAG-CBOR map keys sort by length, then bytes: "roots" < "version"
        + _cbor_text("roots")
        + _cbor_head(4, len(roots))
        + b"".join(_cbor_cid(c) for c in roots)
        + _cbor_text("version")
        + _cbor_head(0, CAR_VERSION)
    )
    return encode_varint(len(body)) + body


def encode_section(cid: CID, data: bytes | bytearray | memoryview) -> bytes:
    """One length-prefixed block section."""
    raw = cid.encode()
    return encode_varint(len(raw) + len(data)) + raw + bytes(data)


# --- reading ---


class _Cbor:
    """A strict decoder for the DAG-CBOR subset a CAR header uses."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise DecodeError("truncated CBOR in CAR header")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _head(self) -> tuple[int, int]:
        first = self._take(1)[0]
        major, info = first >> 5, first & 0x1F
        if info < 24:
            return major, info
        if info > 27:
            raise DecodeError("indefinite-length or reserved CBOR item in CAR header")
        size = 1 << (info - 24)
        value = int.from_bytes(self._take(size), "big")
        if value < (24 if size == 1 else 1 << (4 * size)):
            raise DecodeError("non-minimal CBOR integer in CAR header")
        return major, value

    def item(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise DecodeError("CAR header nested too deeply")
        major, value = self._head()
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return self._take(value)
        if major == 3:
            try:
                return self._take(value).decode()
            except UnicodeDecodeError:
                raise DecodeError("invalid UTF-8 in CAR header") from None
        if major in (4, 5):
            if value > len(self.data) - self.pos:
                raise DecodeError("CBOR collection longer than the CAR header")
            if major == 4:
                return [self.item(depth + 1) for _ in range(value)]
            out: dict[str, Any] = {}
            for _ in range(value):
                key = self.item(depth + 1)
                if not isinstance(key, str) or key in out:
                    raise DecodeError("CAR header map keys must be distinct strings")
                out[key] = self.item(depth + 1)
            return out
        if major == 6:
            if value != CID_TAG:
                raise DecodeError(f"unexpected CBOR tag {value} in CAR header")
            raw = self.item(depth + 1)
            if not isinstance(raw, bytes) or raw[:1] != b"\x00":
                raise DecodeError("malformed CID in CAR header")
            return CID.decode(raw[1:])
        if value in (20, 21, 22):
            return {20: False, 21: True, 22: None}[value]
        raise DecodeError("unsupported CBOR simple value or float in CAR header")


def decode_header(data: bytes, pos: int = 0) -> tuple[list[CID], int]:
    """Parse the header at ``data[pos:]``; returns the roots and the offset past it."""
    length, pos = decode_varint(data, pos)
    if length == 0 or length > CAR_MAX_HEADER_BYTES:
        raise DecodeError(f"CAR header length {length} out of range")
    if length > len(data) - pos:
        raise DecodeError("truncated CAR header")
    cbor = _Cbor(data[pos : pos + length])
    header = cbor.item()
    if cbor.pos != length:
        raise DecodeError("trailing bytes in CAR header")
    if not isinstance(header, dict) or header.get("version") != CAR_VERSION:
        raise DecodeError("not a CARv1 header")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise DecodeError("CAR header roots must be a list of CIDs")
    if len(roots) > CAR_MAX_ROOTS:
        raise DecodeError(f"more than {CAR_MAX_ROOTS} roots in CAR header")
    return roots, pos + length


def _decode_cid(data: bytes, pos: int, end: int) -> tuple[CID, int]:
    if data[pos : pos + 2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        if end - pos < 34:
            raise DecodeError("truncated CIDv0 in CAR section")
        return CID.decode(data[pos : pos + 34]), pos + 34
    cid, after = CID.decode_prefix(memoryview(data)[:end], pos)
    return cid, after


def decode_car(data: bytes) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    """Parse a whole CARv1: ``(roots, [(cid, block bytes), ...])``. Does not verify hashes."""
    roots, pos = decode_header(data)
    blocks: list[tuple[CID, bytes]] = []
    while pos < len(data):
        length, pos = decode_varint(data, pos)
        if length > MAX_SECTION or length > len(data) - pos:
            raise DecodeError(f"CAR section of {length} bytes is truncated or too large")
        end = pos + length
        cid, start = _decode_cid(data, pos, end)
        blocks.append((cid, data[start:end]))
        pos = end
    return roots, blocks
