"""A small, strict protobuf (proto2/proto3 wire format) reader and writer.

We decode the handful of message types the libp2p/IPFS protocols use by hand instead of generating
code: every length is checked against the buffer, unknown wire types (groups) are refused, and the
only exception raised on bad input is ``DecodeError``. Unknown fields are skipped, as protobuf requires.

Reading::

    for field, wire_type, value in iter_fields(data):
        if field == 1 and wire_type == LEN: name = bytes(value)

Writing::

    w = Writer(); w.bytes(1, b"..."); w.uint(2, 5); data = w.finish()
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

from ..errors import DecodeError, LimitExceeded
from .varint import MAX_PROTOBUF_VARINT_BYTES, decode_varint, encode_varint, try_decode_varint

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

FieldValue = int | memoryview


def iter_fields(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, FieldValue]]:
    """Yield ``(field_number, wire_type, value)``; value is an int or a memoryview slice."""
    view = memoryview(data)
    pos = 0
    end = len(view)
    while pos < end:
        key, pos = decode_varint(view, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise DecodeError("protobuf field number 0")
        if wire_type == VARINT:
            value, pos = decode_varint(view, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
            yield field, wire_type, value
        elif wire_type == LEN:
            length, pos = decode_varint(view, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
            if length > end - pos:
                raise DecodeError("protobuf length-delimited field runs past the end")
            yield field, wire_type, view[pos : pos + length]
            pos += length
        elif wire_type == I64:
            if end - pos < 8:
                raise DecodeError("truncated fixed64 field")
            yield field, wire_type, int.from_bytes(view[pos : pos + 8], "little")
            pos += 8
        elif wire_type == I32:
            if end - pos < 4:
                raise DecodeError("truncated fixed32 field")
            yield field, wire_type, int.from_bytes(view[pos : pos + 4], "little")
            pos += 4
        else:
            raise DecodeError(f"unsupported protobuf wire type {wire_type}")


def expect_int(wire_type: int, value: FieldValue, what: str) -> int:
    if wire_type != VARINT or not isinstance(value, int):
        raise DecodeError(f"{what}: expected a varint field")
    return value


def expect_bytes(wire_type: int, value: FieldValue, what: str) -> bytes:
    if wire_type != LEN or isinstance(value, int):
        raise DecodeError(f"{what}: expected a length-delimited field")
    return bytes(value)


def expect_str(wire_type: int, value: FieldValue, what: str) -> str:
    raw = expect_bytes(wire_type, value, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: invalid UTF-8") from exc


def to_int64(value: int) -> int:
    """Reinterpret a decoded varint as a signed two's-complement int64."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


class Writer:
    """Builds a protobuf message field by field (fields are written in call order)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[builtins.bytes] = []

    def uint(self, field: int, value: int) -> Writer:
        if value < 0:
            value &= (1 << 64) - 1  # int32/int64 negatives are 10-byte two's complement
        self._parts.append(encode_varint(field << 3 | VARINT))
        self._parts.append(encode_varint(value))
        return self

    def bool(self, field: int, value: bool) -> Writer:
        return self.uint(field, 1 if value else 0)

    def bytes(self, field: int, value: builtins.bytes | bytearray | memoryview) -> Writer:
        self._parts.append(encode_varint(field << 3 | LEN))
        self._parts.append(encode_varint(len(value)))
        self._parts.append(value if type(value) is builtins.bytes else builtins.bytes(value))
        return self

    def string(self, field: int, value: str) -> Writer:
        return self.bytes(field, value.encode("utf-8"))

    def fixed64(self, field: int, value: int) -> Writer:
        self._parts.append(encode_varint(field << 3 | I64))
        self._parts.append(value.to_bytes(8, "little"))
        return self

    def fixed32(self, field: int, value: int) -> Writer:
        self._parts.append(encode_varint(field << 3 | I32))
        self._parts.append(value.to_bytes(4, "little"))
        return self

    def finish(self) -> builtins.bytes:
        return b"".join(self._parts)


def length_prefixed(message: bytes) -> bytes:
    """``uvarint(len(message)) || message``: the framing most libp2p protocols use."""
    return encode_varint(len(message)) + message


class LengthPrefixedDecoder:
    """Sans-io splitter for a stream of uvarint-length-prefixed messages.

    ``feed(data)`` returns the complete messages so far; a declared length over ``max_size``
    raises ``LimitExceeded`` before any of the body is buffered.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        pos = 0
        buf = self._buf
        while True:
            head = try_decode_varint(buf, pos)
            if head is None:
                break
            length, body = head
            if length > self.max_size:
                raise LimitExceeded(f"message of {length} bytes exceeds limit {self.max_size}")
            if len(buf) - body < length:
                break
            out.append(bytes(buf[body : body + length]))
            pos = body + length
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
