"""Streaming balanced-DAG builder (sans-io): chunks in, blocks out, root CID at the end.

The shape matches the reference importers' "balanced" layout: leaves are grouped ``max_links`` at
a time into File nodes, those nodes again ``max_links`` at a time, and so on until one node is
left. A file of exactly one chunk is that leaf itself (no wrapping node); the empty file is one
empty leaf. We build level by level as leaves arrive: a level is turned into a node as soon as it
holds ``max_links`` entries, so memory is O(depth * max_links) whatever the file size, and the
partial levels are closed bottom-up in ``finish()``.

Per leaf the work is the hash plus O(1) Python; with raw leaves the block's data is the chunk
object itself (no copy). ``leaf_block`` is pure, so callers may hash leaves in worker threads and
feed them to ``add_leaf`` in file order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..wire.varint import encode_varint
from .cid import CID, DAG_PB, DIGEST_SIZES, RAW, hash_digest
from .dagpb import PBLink, encode_node
from .layout import Layout
from .unixfs import encode_file_leaf, file_node


@dataclass(frozen=True, slots=True)
class Block:
    """A block to store: its CID and its bytes (for raw leaves, the chunk object itself)."""

    cid: CID
    data: bytes


# one entry of a level: (cid, tsize = bytes of the whole sub-DAG, blocksize = file bytes under it)
_Entry = tuple[CID, int, int]


class DagBuilder:
    """Feed chunks (or pre-hashed leaves) in file order, then call ``finish()`` once."""

    __slots__ = (
        "_finished",
        "_leaf_version",
        "_levels",
        "_mh_prefix",
        "_node_version",
        "layout",
        "leaves",
        "size",
    )

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.size = 0  # file bytes added so far
        self.leaves = 0  # non-empty leaves added so far
        self._levels: list[list[_Entry]] = [[]]
        self._finished = False
        code = layout.hash_code
        self._mh_prefix = encode_varint(code) + encode_varint(DIGEST_SIZES[code])
        self._node_version = layout.cid_version

    # --- leaves ---
    def leaf_block(self, chunk: bytes) -> Block:
        """Encode and hash one chunk as a leaf block. Pure and thread-safe."""
        layout = self.layout
        if layout.raw_leaves:
            digest = hash_digest(layout.hash_code, chunk)
            return Block(CID(1, RAW, self._mh_prefix + digest), chunk)
        data = encode_file_leaf(chunk)
        return Block(self._node_cid(data), data)

    def _node_cid(self, data: bytes) -> CID:
        digest = hash_digest(self.layout.hash_code, data)
        return CID(self._node_version, DAG_PB, self._mh_prefix + digest)

    def add_leaf(self, block: Block, data_size: int) -> list[Block]:
        """Append a leaf holding ``data_size`` file bytes; return the inner nodes it completed.

        Empty leaves are not linked (as in the reference importer); an empty file comes out of
        ``finish()``.
        """
        return self.add_leaf_ref(block.cid, len(block.data), data_size)

    def add_leaf_ref(self, cid: CID, block_size: int, data_size: int) -> list[Block]:
        """Like ``add_leaf`` for a leaf already stored elsewhere: only its CID and sizes are needed."""
        if self._finished:
            raise RuntimeError("DagBuilder.finish() was already called")
        if data_size == 0:
            return []
        if not 0 < data_size <= self.layout.chunk_size:
            raise ValueError(
                f"leaf of {data_size} bytes exceeds chunk size {self.layout.chunk_size}"
            )
        self.size += data_size
        self.leaves += 1
        level = self._levels[0]
        level.append((cid, block_size, data_size))
        if len(level) < self.layout.max_links:
            return []
        return self._carry()

    def add_chunk(self, chunk: bytes) -> list[Block]:
        """Hash ``chunk`` as the next leaf; return ``[leaf, *completed inner nodes]``.

        An empty chunk returns ``[]`` (see ``add_leaf``).
        """
        if not chunk:
            return self.add_leaf(self.leaf_block(chunk), 0)
        leaf = self.leaf_block(chunk)
        completed = self.add_leaf(leaf, len(chunk))
        if completed:
            completed.insert(0, leaf)
            return completed
        return [leaf]

    # --- inner nodes ---
    def _make_node(self, entries: list[_Entry]) -> tuple[Block, _Entry]:
        links = [PBLink(cid, "", tsize) for cid, tsize, _ in entries]
        sizes = [size for _, _, size in entries]
        data = encode_node(file_node(links, sizes))
        block = Block(self._node_cid(data), data)
        tsize = len(data) + sum(tsize for _, tsize, _ in entries)
        return block, (block.cid, tsize, sum(sizes))

    def _carry(self) -> list[Block]:
        """Turn every full level into a node, from the bottom up."""
        out: list[Block] = []
        levels = self._levels
        max_links = self.layout.max_links
        i = 0
        while len(levels[i]) >= max_links:
            block, entry = self._make_node(levels[i])
            levels[i] = []
            out.append(block)
            if i + 1 == len(levels):
                levels.append([])
            levels[i + 1].append(entry)
            i += 1
        return out

    def finish(self) -> tuple[CID, list[Block]]:
        """Close the partial levels; return the root CID and the blocks not yet returned."""
        if self._finished:
            raise RuntimeError("DagBuilder.finish() was already called")
        self._finished = True
        levels = self._levels
        if self.leaves == 0:
            empty = self.leaf_block(b"")
            return empty.cid, [empty]
        out: list[Block] = []
        i = 0
        while True:
            level = levels[i]
            is_top = not any(levels[i + 1 :])
            if is_top and len(level) == 1:
                # The single remaining entry is the root; at level 0 it is the file's only leaf.
                root = level[0][0]
                self._levels = [[]]
                return root, out
            if level:
                block, entry = self._make_node(level)
                out.append(block)
                if i + 1 == len(levels):
                    levels.append([])
                levels[i + 1].append(entry)
                levels[i] = []
            i += 1


def build_dag(chunks: Iterable[bytes], layout: Layout) -> tuple[CID, list[Block]]:
    """All blocks of the file made of ``chunks`` (in memory; for tests and small files)."""
    builder = DagBuilder(layout)
    blocks: list[Block] = []
    for chunk in chunks:
        blocks += builder.add_chunk(chunk)
    root, rest = builder.finish()
    return root, blocks + rest


def chunk_bytes(data: bytes, chunk_size: int) -> list[bytes]:
    """Fixed-size chunks of ``data`` (the last may be short; none for empty data)."""
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
