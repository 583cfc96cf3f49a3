"""UnixFS v1 (v1.5 metadata included): the protobuf carried in a dag-pb node's Data field.

::

    message Data {
      DataType Type = 1; bytes Data = 2; uint64 filesize = 3; repeated uint64 blocksizes = 4;
      uint64 hashType = 5; uint64 fanout = 6; uint32 mode = 7; UnixTime mtime = 8;
    }
    message UnixTime { int64 Seconds = 1; fixed32 FractionalNanoseconds = 2; }

Encoding follows the reference importers byte for byte (fields in number order, empty Data omitted,
``filesize`` always written for File/Raw, ``blocksizes`` unpacked) so our CIDs match theirs.
Decoding accepts packed ``blocksizes`` and skips unknown fields (plain protobuf rules), but rejects
duplicate singular fields, unknown types, and out-of-range mtime nanoseconds. Also here: directory
and symlink node helpers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from ..errors import DecodeError
from ..limits import MAX_HAMT_FANOUT, MAX_LINKS_PER_NODE
from ..wire.protobuf import I32, LEN, VARINT, FieldValue, iter_fields, to_int64
from ..wire.varint import MAX_PROTOBUF_VARINT_BYTES, decode_varint, encode_varint
from .dagpb import PBLink, PBNode, decode_node, encode_node


class DataType(IntEnum):
    RAW = 0  # legacy: file data wrapped in dag-pb; read, never written
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


# Short aliases matching the spec's enum names.
Raw, Directory, File, Metadata, Symlink, HAMTShard = (
    DataType.RAW,
    DataType.DIRECTORY,
    DataType.FILE,
    DataType.METADATA,
    DataType.SYMLINK,
    DataType.HAMT_SHARD,
)

_MAX_UINT64 = (1 << 64) - 1
_MAX_NANOS = 999_999_999


@dataclass(frozen=True, slots=True)
class UnixTime:
    """Seconds since the epoch (may be negative) and optional nanoseconds (1..999999999)."""

    seconds: int
    nanos: int | None = None

    def encode(self) -> bytes:
        if not -(1 << 63) <= self.seconds < 1 << 63:
            raise ValueError("mtime seconds out of int64 range")
        out = b"\x08" + encode_varint(self.seconds & _MAX_UINT64)
        if self.nanos:  # 0 means "no fraction" and must be stripped (spec)
            if not 0 < self.nanos <= _MAX_NANOS:
                raise ValueError(f"mtime nanoseconds out of range: {self.nanos}")
            out += b"\x15" + self.nanos.to_bytes(4, "little")
        return out

    @classmethod
    def decode(cls, data: bytes | memoryview) -> UnixTime:
        seconds: int | None = None
        nanos: int | None = None
        for fnum, wire, value in iter_fields(data):
            if fnum == 1:
                if wire != VARINT or seconds is not None:
                    raise DecodeError("unixfs: bad or duplicate mtime.Seconds")
                assert isinstance(value, int)
                seconds = to_int64(value)
            elif fnum == 2:
                if wire != I32 or nanos is not None:
                    raise DecodeError("unixfs: bad or duplicate mtime.FractionalNanoseconds")
                assert isinstance(value, int)
                if not 0 < value <= _MAX_NANOS:
                    raise DecodeError(f"unixfs: mtime nanoseconds out of range: {value}")
                nanos = value
        if seconds is None:
            raise DecodeError("unixfs: mtime without Seconds")
        return cls(seconds, nanos)


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """A decoded UnixFS ``Data`` message. ``data`` is ``b""`` when absent."""

    type: int
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hashtype: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None

    def encode(self) -> bytes:
        parts = [b"\x08", encode_varint(int(self.type))]
        if self.data:
            parts += [b"\x12", encode_varint(len(self.data)), self.data]
        if self.filesize is not None:
            parts += [b"\x18", encode_varint(self.filesize)]
        for size in self.blocksizes:
            parts += [b"\x20", encode_varint(size)]
        if self.hashtype is not None:
            parts += [b"\x28", encode_varint(self.hashtype)]
        if self.fanout is not None:
            parts += [b"\x30", encode_varint(self.fanout)]
        if self.mode is not None:
            parts += [b"\x38", encode_varint(self.mode & 0xFFFFFFFF)]
        if self.mtime is not None:
            mt = self.mtime.encode()
            parts += [b"\x42", encode_varint(len(mt)), mt]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> UnixFSData:
        """Decode strictly enough to be safe; raises only ``DecodeError``."""
        seen: set[int] = set()
        ftype: int | None = None
        body = b""
        filesize: int | None = None
        blocksizes: list[int] = []
        hashtype: int | None = None
        fanout: int | None = None
        mode: int | None = None
        mtime: UnixTime | None = None
        for fnum, wire, value in iter_fields(data):
            if fnum == 4:
                _add_blocksizes(blocksizes, wire, value)
                continue
            if fnum > 8:
                continue  # unknown field: skipped, as protobuf requires
            if fnum in seen:
                raise DecodeError(f"unixfs: duplicate field {fnum}")
            seen.add(fnum)
            if fnum in (2, 8):
                if wire != LEN or isinstance(value, int):
                    raise DecodeError(f"unixfs: field {fnum} must be length-delimited")
                if fnum == 2:
                    body = bytes(value)
                else:
                    mtime = UnixTime.decode(value)
                continue
            if wire != VARINT or not isinstance(value, int):
                raise DecodeError(f"unixfs: field {fnum} must be a varint")
            if fnum == 1:
                if not 0 <= value <= 5:
                    raise DecodeError(f"unixfs: unknown data type {value}")
                ftype = value
            elif fnum == 3:
                filesize = value
            elif fnum == 5:
                hashtype = value
            elif fnum == 6:
                if value > MAX_HAMT_FANOUT:
                    raise DecodeError(f"unixfs: fanout {value} exceeds {MAX_HAMT_FANOUT}")
                fanout = value
            elif fnum == 7:
                mode = value & 0xFFFFFFFF
        if ftype is None:
            raise DecodeError("unixfs: missing Type")
        for n in (filesize, hashtype, *blocksizes):
            if n is not None and n > _MAX_UINT64:
                raise DecodeError("unixfs: value exceeds uint64")
        return cls(ftype, body, filesize, tuple(blocksizes), hashtype, fanout, mode, mtime)

    @property
    def content_size(self) -> int:
        """Bytes of file content this node stands for: inline data plus all blocksizes."""
        return len(self.data) + sum(self.blocksizes)


def _add_blocksizes(out: list[int], wire: int, value: FieldValue) -> None:
    if wire == VARINT and isinstance(value, int):
        out.append(value)
    elif wire == LEN and not isinstance(value, int):
        pos = 0
        while pos < len(value):
            n, pos = decode_varint(value, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
            out.append(n)
            if len(out) > MAX_LINKS_PER_NODE:
                break
    else:
        raise DecodeError("unixfs: bad wire type for blocksizes")
    if len(out) > MAX_LINKS_PER_NODE:
        raise DecodeError(f"unixfs: more than {MAX_LINKS_PER_NODE} blocksizes")


# --- file nodes ---


def encode_file_leaf(chunk: bytes) -> bytes:
    """dag-pb bytes of a UnixFS File leaf holding ``chunk`` (one copy of the chunk).

    Equal to ``encode_node(PBNode([], UnixFSData(File, chunk, len(chunk)).encode()))``.
    """
    n = len(chunk)
    if n == 0:
        return b"\x0a\x04\x08\x02\x18\x00"
    size = encode_varint(n)
    ux_len = 2 + 1 + len(size) + n + 1 + len(size)
    return b"".join((b"\x0a", encode_varint(ux_len), b"\x08\x02\x12", size, chunk, b"\x18", size))


def file_node(links: list[PBLink], blocksizes: list[int], data: bytes = b"") -> PBNode:
    """A UnixFS File node: inline ``data`` followed by the children (sister lists)."""
    if len(links) != len(blocksizes):
        raise ValueError("links and blocksizes differ in length")
    ux = UnixFSData(File, data, len(data) + sum(blocksizes), tuple(blocksizes))
    return PBNode(links, ux.encode())


# --- directories and symlinks ---


def check_entry_name(name: str) -> None:
    """Raise ``DecodeError`` for names UnixFS directories must not hold."""
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise DecodeError(f"unixfs: invalid directory entry name {name!r}")


def named_entries(entries: Iterable[PBLink]) -> list[tuple[bytes, PBLink]]:
    """Directory entries keyed by name bytes, sorted; ``ValueError`` for a missing, invalid or
    duplicate name (plain and sharded directories alike)."""
    keyed: list[tuple[bytes, PBLink]] = []
    for link in entries:
        if link.name is None:
            raise ValueError("directory entries need a name")
        try:
            check_entry_name(link.name)
        except DecodeError as exc:
            raise ValueError(str(exc)) from None
        keyed.append((link.name.encode("utf-8"), link))
    keyed.sort(key=lambda kv: kv[0])
    for (a, _), (b, _) in itertools.pairwise(keyed):
        if a == b:
            raise ValueError(f"duplicate directory entry name {a.decode()!r}")
    return keyed


def directory_node(
    entries: Iterable[PBLink], *, mode: int | None = None, mtime: UnixTime | None = None
) -> PBNode:
    """A UnixFS Directory node; links sorted by name bytes. Every entry needs a valid unique name.

    Raises ``ValueError`` for a bad or duplicate name or a link over the limit.
    """
    keyed = named_entries(entries)
    if len(keyed) > MAX_LINKS_PER_NODE:
        raise ValueError(f"more than {MAX_LINKS_PER_NODE} directory entries (use a HAMT)")
    ux = UnixFSData(Directory, mode=mode, mtime=mtime)
    return PBNode([link for _, link in keyed], ux.encode())


def encode_directory(
    entries: Iterable[PBLink], *, mode: int | None = None, mtime: UnixTime | None = None
) -> bytes:
    """dag-pb bytes of a directory (see ``directory_node``)."""
    return encode_node(directory_node(entries, mode=mode, mtime=mtime))


def decode_directory(data: bytes | bytearray | memoryview) -> tuple[UnixFSData, list[PBLink]]:
    """Decode a UnixFS Directory block; entries keep their on-wire order.

    Raises ``DecodeError`` for a non-directory, a bad or duplicate name.
    """
    node = decode_node(data)
    if node.data is None:
        raise DecodeError("unixfs: dag-pb node without UnixFS data")
    ux = UnixFSData.decode(node.data)
    if ux.type != Directory:
        raise DecodeError(f"unixfs: expected a directory, found {DataType(ux.type).name.lower()}")
    check_directory_links(node.links)
    return ux, node.links


def check_directory_links(links: list[PBLink]) -> None:
    """Every entry named validly and uniquely (byte-for-byte), else ``DecodeError``."""
    names: set[str] = set()
    for link in links:
        name = link.name or ""
        check_entry_name(name)
        if name in names:
            raise DecodeError(f"unixfs: duplicate directory entry name {name!r}")
        names.add(name)


def encode_symlink(target: str) -> bytes:
    """dag-pb bytes of a UnixFS Symlink pointing at ``target``."""
    return encode_node(PBNode([], UnixFSData(Symlink, target.encode("utf-8")).encode()))
