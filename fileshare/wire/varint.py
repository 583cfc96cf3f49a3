"""Unsigned LEB128 varints (multiformats unsigned-varint), strict.

The multiformats spec caps varints at 9 bytes (63 bits) and forbids non-minimal encodings;
protobuf allows 10 bytes. Callers pick the cap.
"""

from __future__ import annotations

from ..errors import DecodeError

MAX_VARINT_BYTES = 9  # multiformats unsigned-varint
MAX_PROTOBUF_VARINT_BYTES = 10


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]  # values 0..127 encode to themselves


def encode_varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if value < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(
    buf: bytes | bytearray | memoryview,
    pos: int = 0,
    max_bytes: int = MAX_VARINT_BYTES,
    *,
    minimal: bool = True,
) -> tuple[int, int]:
    """Decode one varint at ``buf[pos:]``; return ``(value, new_pos)``.

    Raises ``DecodeError`` when the buffer ends inside the varint, when it is longer than
    ``max_bytes``, or (with ``minimal``) when it has a redundant trailing zero byte.
    """
    end = len(buf)
    if pos < end and buf[pos] < 0x80:  # one byte: most keys, lengths and small values
        return buf[pos], pos + 1
    result = 0
    shift = 0
    for i in range(max_bytes):
        if pos + i >= end:
            raise DecodeError("truncated varint")
        b = buf[pos + i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if minimal and b == 0 and i > 0:
                raise DecodeError("non-minimal varint")
            return result, pos + i + 1
        shift += 7
    raise DecodeError(f"varint longer than {max_bytes} bytes")


def try_decode_varint(
    buf: bytes | bytearray | memoryview, pos: int = 0, max_bytes: int = MAX_VARINT_BYTES
) -> tuple[int, int] | None:
    """Like ``decode_varint`` but returns None when more bytes are needed (stream parsing)."""
    end = len(buf)
    for i in range(min(max_bytes, end - pos)):
        if buf[pos + i] < 0x80:
            return decode_varint(buf, pos, max_bytes)
    if end - pos >= max_bytes:
        raise DecodeError(f"varint longer than {max_bytes} bytes")
    return None
