"""dag-pb (codec 0x70): the protobuf envelope of UnixFS nodes, encoded canonically, decoded strictly.

Wire form (ipld dag-pb spec)::

    message PBLink { bytes Hash = 1; string Name = 2; uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; bytes Data = 1; }

Encoding writes every Link before Data (the canonical order, which does not follow field numbers).
Decoding enforces the spec's strictness rules: PBLink fields in field-number order, no duplicate
fields, no unknown fields or wire types, a Hash that is a valid CID, and Links not interleaved with
Data. Data-first nodes are accepted (the spec says decoders should accept either order, as old IPFS
data exists in both forms). Non-canonical varints are tolerated as in any protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DecodeError
from ..limits import MAX_BLOCK_SIZE, MAX_LINKS_PER_NODE
from ..wire.varint import MAX_PROTOBUF_VARINT_BYTES, decode_varint, encode_varint
from .cid import CID

_MAX_UINT64 = (1 << 64) - 1

# field keys: (field_number << 3) | wire_type
_KEY_NODE_DATA = 0x0A  # field 1, LEN
_KEY_NODE_LINK = 0x12  # field 2, LEN
_KEY_LINK_HASH = 0x0A  # field 1, LEN
_KEY_LINK_NAME = 0x12  # field 2, LEN
_KEY_LINK_TSIZE = 0x18  # field 3, VARINT


@dataclass(frozen=True, slots=True)
class PBLink:
    """A link: the child's CID, an optional name (directories) and the child DAG's total size."""

    hash: CID
    name: str | None = None
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A dag-pb node: ordered links and optional opaque data (a UnixFS message in UnixFS)."""

    links: list[PBLink] = field(default_factory=list)
    data: bytes | None = None


def encode_link(link: PBLink) -> bytes:
    """The PBLink message bytes (without the enclosing PBNode field key and length)."""
    cid = link.hash.encode()
    parts = [b"\x0a", encode_varint(len(cid)), cid]
    if link.name is not None:
        name = link.name.encode("utf-8")
        parts += [b"\x12", encode_varint(len(name)), name]
    if link.tsize is not None:
        if not 0 <= link.tsize <= _MAX_UINT64:
            raise ValueError(f"Tsize out of range: {link.tsize}")
        parts += [b"\x18", encode_varint(link.tsize)]
    return b"".join(parts)


def encode_links(links: list[PBLink]) -> bytes:
    """The Links section of a PBNode (each link with its field key and length)."""
    parts: list[bytes] = []
    for link in links:
        body = encode_link(link)
        parts += [b"\x12", encode_varint(len(body)), body]
    return b"".join(parts)


def encode_node(node: PBNode) -> bytes:
    """Canonical dag-pb bytes: all Links (field 2) first, then Data (field 1) if present."""
    links = encode_links(node.links)
    if node.data is None:
        return links
    return b"".join((links, b"\x0a", encode_varint(len(node.data)), node.data))


def _read_len(buf: memoryview, pos: int, end: int, what: str) -> tuple[int, int]:
    """Read a length prefix at ``pos``; return (start, stop) of the body."""
    length, pos = decode_varint(buf, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
    if length > end - pos:
        raise DecodeError(f"dag-pb: {what} runs past the end of its message")
    return pos, pos + length


def decode_link(buf: memoryview) -> PBLink:
    """Decode one PBLink message strictly (see module docstring)."""
    pos = 0
    end = len(buf)
    last_field = 0
    cid: CID | None = None
    name: str | None = None
    tsize: int | None = None
    while pos < end:
        key, pos = decode_varint(buf, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
        fnum = key >> 3
        if fnum <= last_field:
            raise DecodeError("dag-pb: PBLink fields duplicated or out of order")
        last_field = fnum
        if key == _KEY_LINK_HASH:
            start, pos = _read_len(buf, pos, end, "PBLink.Hash")
            cid = CID.decode(buf[start:pos])
        elif key == _KEY_LINK_NAME:
            start, pos = _read_len(buf, pos, end, "PBLink.Name")
            try:
                name = str(buf[start:pos], "utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("dag-pb: PBLink.Name is not valid UTF-8") from exc
        elif key == _KEY_LINK_TSIZE:
            tsize, pos = decode_varint(buf, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
            if tsize > _MAX_UINT64:
                raise DecodeError("dag-pb: PBLink.Tsize exceeds uint64")
        else:
            raise DecodeError(f"dag-pb: unexpected PBLink field {fnum} (wire type {key & 7})")
    if cid is None:
        raise DecodeError("dag-pb: PBLink without a Hash")
    return PBLink(cid, name, tsize)


def decode_node(data: bytes | bytearray | memoryview) -> PBNode:
    """Decode a dag-pb block strictly; raises only ``DecodeError``."""
    buf = memoryview(data)
    end = len(buf)
    if end > MAX_BLOCK_SIZE:
        raise DecodeError(f"dag-pb: block of {end} bytes exceeds {MAX_BLOCK_SIZE}")
    pos = 0
    links: list[PBLink] = []
    node_data: bytes | None = None
    links_before_data = False
    while pos < end:
        key, pos = decode_varint(buf, pos, MAX_PROTOBUF_VARINT_BYTES, minimal=False)
        if key == _KEY_NODE_LINK:
            if node_data is not None and links_before_data:
                raise DecodeError("dag-pb: Links interleaved with Data")
            if len(links) >= MAX_LINKS_PER_NODE:
                raise DecodeError(f"dag-pb: more than {MAX_LINKS_PER_NODE} links in one node")
            start, pos = _read_len(buf, pos, end, "PBNode.Links")
            links.append(decode_link(buf[start:pos]))
        elif key == _KEY_NODE_DATA:
            if node_data is not None:
                raise DecodeError("dag-pb: duplicate Data field")
            links_before_data = bool(links)
            start, pos = _read_len(buf, pos, end, "PBNode.Data")
            node_data = bytes(buf[start:pos])
        else:
            raise DecodeError(f"dag-pb: unexpected PBNode field {key >> 3} (wire type {key & 7})")
    return PBNode(links, node_data)
