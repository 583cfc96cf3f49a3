"""UnixFS sharded directories (HAMTShard nodes), built and read as the UnixFS spec describes.

A directory too large for one plain node is a hash-array-mapped trie: each node has up to 256
buckets, an entry's bucket at depth ``d`` is byte ``d`` of ``murmur3-x64-64(name)``, and a bucket
holds either the entry itself (link name = two upper-case hex digits + the entry name) or, when
several entries share it, a child shard (link name = the two digits). A node's UnixFS data is
``HAMTShard`` with ``hashType`` 0x22, ``fanout`` 256 and a bitfield of occupied buckets (bit ``i``
for bucket ``i``, as the minimal big-endian bytes of that integer). Links are in bucket order and
Tsize counts the whole subtree. The output matches the JS reference importer (tested).

The hash is not collision-resistant: names sharing all 64 bits would need more levels than the
hash has; ``build_hamt`` refuses them (``ValueError``) instead of inventing an extension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from ..errors import DecodeError
from ..limits import MAX_DAG_DEPTH
from .builder import Block
from .cid import CID, DAG_PB
from .dagpb import PBLink, PBNode, decode_node, encode_node
from .murmur3 import murmur3_x64_64
from .unixfs import HAMTShard, UnixFSData, check_entry_name, named_entries

__all__ = [
    "HAMT_FANOUT",
    "HAMT_SHARD_THRESHOLD",
    "MURMUR3_X64_64",
    "build_hamt",
    "hamt_entries",
    "hamt_lookup",
]

HAMT_FANOUT = 256
MURMUR3_X64_64 = 0x22  # multihash code of the bucket hash
HAMT_SHARD_THRESHOLD = 256 * 1024  # bytes: a plain directory node larger than this is sharded
_LEVELS = 8  # bytes of the 64-bit hash, one per level


def build_hamt(entries: Sequence[PBLink], hash_code: int) -> tuple[CID, int, list[Block]]:
    """A sharded directory of ``entries`` (named links with Tsize): its root CID, the root link's
    Tsize and every shard block (children before parents, root last).

    Raises ``ValueError`` for a bad or duplicate name, or names whose hashes collide completely.
    """
    items = [(murmur3_x64_64(key), link.name or "", link) for key, link in named_entries(entries)]
    blocks: list[Block] = []
    root, tsize = _build(items, 0, hash_code, blocks)
    return root, tsize, blocks


def _build(
    items: list[tuple[bytes, str, PBLink]], depth: int, hash_code: int, out: list[Block]
) -> tuple[CID, int]:
    if depth >= _LEVELS:
        raise ValueError(
            "directory entry names collide in all 64 bits of their HAMT hash: "
            + ", ".join(repr(name) for _, name, _ in items[:3])
        )
    buckets: dict[int, list[tuple[bytes, str, PBLink]]] = {}
    for item in items:
        buckets.setdefault(item[0][depth], []).append(item)
    links: list[PBLink] = []
    occupied = 0
    total = 0
    for index in sorted(buckets):
        occupied |= 1 << index
        group = buckets[index]
        prefix = f"{index:02X}"
        if len(group) == 1:
            _, name, link = group[0]
            links.append(PBLink(link.hash, prefix + name, link.tsize))
            total += link.tsize or 0
        else:
            cid, tsize = _build(group, depth + 1, hash_code, out)
            links.append(PBLink(cid, prefix, tsize))
            total += tsize
    bitfield = occupied.to_bytes((occupied.bit_length() + 7) // 8, "big")
    data = UnixFSData(HAMTShard, bitfield, hashtype=MURMUR3_X64_64, fanout=HAMT_FANOUT).encode()
    block = encode_node(PBNode(links, data))
    cid = CID.from_data(DAG_PB, block, hash_code)
    out.append(Block(cid, block))
    return cid, len(block) + total


def _shard(data: bytes) -> tuple[UnixFSData, list[PBLink]]:
    node = decode_node(data)
    if node.data is None:
        raise DecodeError("unixfs: HAMT shard without UnixFS data")
    ux = UnixFSData.decode(node.data)
    if ux.type != HAMTShard:
        raise DecodeError("unixfs: expected a HAMT shard")
    if ux.hashtype != MURMUR3_X64_64:
        raise DecodeError(f"unixfs: unsupported HAMT hash type {ux.hashtype}")
    if ux.fanout != HAMT_FANOUT:
        raise DecodeError(f"unixfs: unsupported HAMT fanout {ux.fanout} (only 256 is read)")
    return ux, node.links


def hamt_entries(
    root: bytes, load: Callable[[CID], bytes], max_depth: int = MAX_DAG_DEPTH
) -> Iterator[PBLink]:
    """Every entry of the sharded directory whose root block is ``root`` (link names without
    their bucket prefix), loading child shards with ``load``. Raises ``DecodeError`` for a
    malformed shard."""
    stack: list[tuple[bytes, int]] = [(root, 0)]
    while stack:
        data, depth = stack.pop()
        if depth > min(max_depth, _LEVELS):
            raise DecodeError("unixfs: HAMT deeper than its hash")
        _, links = _shard(data)
        children: list[tuple[bytes, int]] = []
        for link in links:
            name = link.name or ""
            if len(name) < 2 or not _is_prefix(name[:2]):
                raise DecodeError(f"unixfs: bad HAMT link name {name!r}")
            if len(name) == 2:
                children.append((load(link.hash), depth + 1))
            else:
                check_entry_name(name[2:])
                yield PBLink(link.hash, name[2:], link.tsize)
        stack.extend(reversed(children))


def hamt_lookup(
    root: bytes, name: str, load: Callable[[CID], bytes]
) -> tuple[PBLink | None, list[CID]]:
    """The entry ``name`` of the sharded directory with root block ``root`` (or None), and the
    child shards passed on the way: the spec's path resolution, one shard per level."""
    digest = murmur3_x64_64(name.encode("utf-8"))
    data = root
    passed: list[CID] = []
    for depth in range(_LEVELS):
        _, links = _shard(data)
        prefix = f"{digest[depth]:02X}"
        for link in links:
            if link.name == prefix:
                passed.append(link.hash)
                data = load(link.hash)
                break
            if link.name == prefix + name:
                return PBLink(link.hash, name, link.tsize), passed
        else:
            return None, passed
    raise DecodeError("unixfs: HAMT deeper than its hash")


def _is_prefix(text: str) -> bool:
    return all(c in "0123456789ABCDEF" for c in text)
