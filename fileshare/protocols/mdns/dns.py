"""Sans-io DNS message codec (RFC 1035) with the Multicast DNS bits of RFC 6762.

A name is a tuple of labels (``bytes``, 1..63 bytes each, at most 255 bytes on the wire), so any
label round-trips exactly; ``name("_p2p._udp.local")`` builds one from dotted text and
``same_name`` compares case-insensitively (ASCII), as DNS does.

The top bit of a question's class is the mDNS "unicast response" bit and the top bit of a
record's class is the "cache flush" bit; both are exposed as booleans, the class as 15 bits.

Decoding follows compression pointers only strictly backwards (so no loop is possible) and at
most ``MDNS_MAX_POINTER_JUMPS`` times per name, refuses messages over ``MDNS_MAX_MESSAGE`` bytes
or with more than ``MDNS_MAX_RECORDS`` entries, and raises only ``DecodeError`` (limits
included). Encoding compresses owner names and PTR targets; invalid names, counts or
field values raise ``LimitExceeded``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from ...errors import DecodeError, LimitExceeded
from ...limits import MDNS_MAX_MESSAGE, MDNS_MAX_POINTER_JUMPS, MDNS_MAX_RECORDS

__all__ = [
    "CLASS_IN",
    "FLAG_AA",
    "FLAG_QR",
    "FLAG_TC",
    "AData",
    "AaaaData",
    "Message",
    "Name",
    "PtrData",
    "Question",
    "RData",
    "RRType",
    "RawData",
    "Record",
    "SrvData",
    "TxtData",
    "decode_message",
    "encode_message",
    "name",
    "name_text",
    "same_name",
]

Name = tuple[bytes, ...]

CLASS_IN = 1
FLAG_QR = 0x8000  # response
FLAG_AA = 0x0400  # authoritative answer
FLAG_TC = 0x0200  # truncated
_TOP_BIT = 0x8000
_MAX_LABEL = 63
_MAX_NAME_WIRE = 255
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF
_HEADER = struct.Struct("!HHHHHH")
_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_SRV = struct.Struct("!HHH")


class RRType(IntEnum):
    A = 1
    PTR = 12
    TXT = 16
    AAAA = 28
    SRV = 33
    ANY = 255


@dataclass(frozen=True)
class PtrData:
    target: Name


@dataclass(frozen=True)
class TxtData:
    strings: tuple[bytes, ...]  # each at most 255 bytes


@dataclass(frozen=True)
class AData:
    address: ipaddress.IPv4Address


@dataclass(frozen=True)
class AaaaData:
    address: ipaddress.IPv6Address


@dataclass(frozen=True)
class SrvData:
    priority: int
    weight: int
    port: int
    target: Name


@dataclass(frozen=True)
class RawData:
    """The rdata of a record type this codec does not interpret."""

    data: bytes


RData = PtrData | TxtData | AData | AaaaData | SrvData | RawData


@dataclass(frozen=True)
class Question:
    name: Name
    qtype: int
    qclass: int = CLASS_IN
    unicast_response: bool = False


@dataclass(frozen=True)
class Record:
    name: Name
    rtype: int
    ttl: int
    data: RData
    rclass: int = CLASS_IN
    cache_flush: bool = False


@dataclass(frozen=True)
class Message:
    id: int = 0
    flags: int = 0
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = ()

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    def records(self) -> tuple[Record, ...]:
        """Answers, authorities and additionals, in that order."""
        return self.answers + self.authorities + self.additionals


def name(text: str) -> Name:
    """``"_p2p._udp.local"`` -> ``(b"_p2p", b"_udp", b"local")`` (a trailing dot is allowed)."""
    stripped = text[:-1] if text.endswith(".") else text
    if not stripped:
        return ()
    labels = tuple(part.encode("utf-8") for part in stripped.split("."))
    _check_name(labels)
    return labels


def name_text(value: Name) -> str:
    """Dotted text of a name (labels decoded as UTF-8 with replacement; for display)."""
    return ".".join(label.decode("utf-8", "replace") for label in value)


def same_name(a: Name, b: Name) -> bool:
    """DNS name equality: ASCII case-insensitive."""
    return len(a) == len(b) and all(x.lower() == y.lower() for x, y in zip(a, b, strict=True))


def _check_name(value: Name) -> None:
    wire = 1
    for label in value:
        if not 1 <= len(label) <= _MAX_LABEL:
            raise LimitExceeded(f"DNS label of {len(label)} bytes (must be 1..{_MAX_LABEL})")
        wire += 1 + len(label)
    if wire > _MAX_NAME_WIRE:
        raise LimitExceeded(f"DNS name of {wire} bytes exceeds {_MAX_NAME_WIRE}")


# --- encoding ----------------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()
        self._offsets: dict[Name, int] = {}

    def u16(self, value: int, what: str) -> None:
        if not 0 <= value <= _MAX_U16:
            raise LimitExceeded(f"DNS {what} {value} outside 0..{_MAX_U16}")
        self.buf += value.to_bytes(2, "big")

    def name(self, value: Name, *, compress: bool = True) -> None:
        _check_name(value)
        for i in range(len(value)):
            suffix = value[i:]
            offset = self._offsets.get(suffix) if compress else None
            if offset is not None:
                self.buf += (0xC000 | offset).to_bytes(2, "big")
                return
            if len(self.buf) < 0x4000:
                self._offsets.setdefault(suffix, len(self.buf))
            self.buf.append(len(value[i]))
            self.buf += value[i]
        self.buf.append(0)

    def question(self, q: Question) -> None:
        self.name(q.name)
        self.u16(q.qtype, "type")
        if not 0 <= q.qclass < _TOP_BIT:
            raise LimitExceeded(f"DNS class {q.qclass} outside 0..32767")
        self.u16(q.qclass | (_TOP_BIT if q.unicast_response else 0), "class")

    def record(self, r: Record) -> None:
        self.name(r.name)
        self.u16(r.rtype, "type")
        if not 0 <= r.rclass < _TOP_BIT:
            raise LimitExceeded(f"DNS class {r.rclass} outside 0..32767")
        self.u16(r.rclass | (_TOP_BIT if r.cache_flush else 0), "class")
        if not 0 <= r.ttl <= _MAX_U32:
            raise LimitExceeded(f"DNS TTL {r.ttl} outside 0..{_MAX_U32}")
        self.buf += r.ttl.to_bytes(4, "big")
        length_at = len(self.buf)
        self.buf += b"\0\0"
        self._rdata(r.data)
        rdlength = len(self.buf) - length_at - 2
        if rdlength > _MAX_U16:
            raise LimitExceeded(f"DNS rdata of {rdlength} bytes exceeds {_MAX_U16}")
        self.buf[length_at : length_at + 2] = rdlength.to_bytes(2, "big")

    def _rdata(self, data: RData) -> None:
        if isinstance(data, PtrData):
            self.name(data.target)
        elif isinstance(data, TxtData):
            for s in data.strings:
                if len(s) > 255:
                    raise LimitExceeded(f"TXT string of {len(s)} bytes exceeds 255")
                self.buf.append(len(s))
                self.buf += s
        elif isinstance(data, (AData, AaaaData)):
            self.buf += data.address.packed
        elif isinstance(data, SrvData):
            self.u16(data.priority, "SRV priority")
            self.u16(data.weight, "SRV weight")
            self.u16(data.port, "SRV port")
            self.name(data.target, compress=False)
        else:
            self.buf += data.data


def encode_message(msg: Message) -> bytes:
    """The wire bytes of ``msg`` (names compressed where possible)."""
    sections = (msg.questions, msg.answers, msg.authorities, msg.additionals)
    w = _Writer()
    w.u16(msg.id, "id")
    w.u16(msg.flags, "flags")
    for section in sections:
        w.u16(len(section), "section count")
    for q in msg.questions:
        w.question(q)
    for records in sections[1:]:
        for r in records:
            w.record(r)
    return bytes(w.buf)


# --- decoding ----------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"DNS message truncated in {what}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def name(self, limit: int) -> Name:
        """A possibly compressed name starting at ``pos``; its in-place part must end by ``limit``."""
        data = self.data
        labels: list[bytes] = []
        wire = 1
        pos = self.pos
        floor = pos  # a pointer must point strictly before the part it was found in
        jumps = 0
        end: int | None = None
        while True:
            if pos >= limit if end is None else pos >= len(data):
                raise DecodeError("DNS name runs past its bounds")
            length = data[pos]
            kind = length & 0xC0
            if kind == 0xC0:
                if pos + 1 >= (limit if end is None else len(data)):
                    raise DecodeError("DNS compression pointer truncated")
                target = ((length & 0x3F) << 8) | data[pos + 1]
                if end is None:
                    end = pos + 2
                jumps += 1
                if jumps > MDNS_MAX_POINTER_JUMPS:
                    raise DecodeError(
                        f"DNS name follows more than {MDNS_MAX_POINTER_JUMPS} pointers"
                    )
                if target >= floor:
                    raise DecodeError("DNS compression pointer does not point backwards")
                pos = floor = target
                continue
            if kind:
                raise DecodeError(f"DNS label type 0x{kind:02x} is not supported")
            if length == 0:
                pos += 1
                break
            stop = limit if end is None else len(data)
            if pos + 1 + length > stop:
                raise DecodeError("DNS label runs past its bounds")
            wire += 1 + length
            if wire > _MAX_NAME_WIRE:
                raise DecodeError(f"DNS name longer than {_MAX_NAME_WIRE} bytes")
            labels.append(data[pos + 1 : pos + 1 + length])
            pos += 1 + length
        self.pos = end if end is not None else pos
        return tuple(labels)

    def question(self) -> Question:
        qname = self.name(len(self.data))
        qtype = self.u16("question type")
        qclass = self.u16("question class")
        return Question(qname, qtype, qclass & ~_TOP_BIT, bool(qclass & _TOP_BIT))

    def record(self) -> Record:
        rname = self.name(len(self.data))
        rtype, rclass, ttl, rdlength = _unpack_fixed(self.take(_FIXED.size, "record header"))
        start = self.pos
        stop = start + rdlength
        if stop > len(self.data):
            raise DecodeError("DNS rdata runs past the end of the message")
        data = self._rdata(rtype, start, stop)
        self.pos = stop
        return Record(rname, rtype, ttl, data, rclass & ~_TOP_BIT, bool(rclass & _TOP_BIT))

    def _rdata(self, rtype: int, start: int, stop: int) -> RData:
        raw = self.data[start:stop]
        if rtype == RRType.A:
            if len(raw) != 4:
                raise DecodeError(f"A record with {len(raw)} bytes of rdata")
            return AData(ipaddress.IPv4Address(raw))
        if rtype == RRType.AAAA:
            if len(raw) != 16:
                raise DecodeError(f"AAAA record with {len(raw)} bytes of rdata")
            return AaaaData(ipaddress.IPv6Address(raw))
        if rtype == RRType.TXT:
            strings: list[bytes] = []
            i = 0
            while i < len(raw):
                n = raw[i]
                if i + 1 + n > len(raw):
                    raise DecodeError("TXT string runs past its rdata")
                strings.append(raw[i + 1 : i + 1 + n])
                i += 1 + n
            return TxtData(tuple(strings))
        if rtype in (RRType.PTR, RRType.SRV):
            self.pos = start
            if rtype == RRType.SRV:
                priority, weight, port = _SRV.unpack(self.take(_SRV.size, "SRV rdata"))
                if self.pos > stop:
                    raise DecodeError("SRV rdata too short")
            target = self.name(stop)
            if self.pos != stop:
                raise DecodeError("trailing bytes after the name in rdata")
            if rtype == RRType.PTR:
                return PtrData(target)
            return SrvData(priority, weight, port, target)
        return RawData(raw)


def _unpack_fixed(chunk: bytes) -> tuple[int, int, int, int]:
    rtype, rclass, ttl, rdlength = _FIXED.unpack(chunk)
    return int(rtype), int(rclass), int(ttl), int(rdlength)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse one DNS message; raises only ``DecodeError`` (limits included)."""
    raw = bytes(data)
    if len(raw) > MDNS_MAX_MESSAGE:
        raise DecodeError(f"DNS message of {len(raw)} bytes exceeds {MDNS_MAX_MESSAGE}")
    if len(raw) < _HEADER.size:
        raise DecodeError(f"DNS message of {len(raw)} bytes is shorter than its header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(raw)
    if qd + an + ns + ar > MDNS_MAX_RECORDS:
        raise DecodeError(f"DNS message with more than {MDNS_MAX_RECORDS} entries")
    reader = _Reader(raw)
    reader.pos = _HEADER.size
    questions = tuple(reader.question() for _ in range(qd))
    sections = [tuple(reader.record() for _ in range(count)) for count in (an, ns, ar)]
    if reader.pos != len(raw):
        raise DecodeError(f"{len(raw) - reader.pos} trailing bytes after the DNS message")
    return Message(int(ident), int(flags), questions, sections[0], sections[1], sections[2])
