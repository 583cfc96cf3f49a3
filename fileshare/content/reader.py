"""Decoding blocks into UnixFS nodes and reading a file's bytes back out of its DAG.

``decode_block`` validates one block on its own (sister lists, filesize, link names);
``read_file`` walks a file DAG depth-first and also checks every link against the child it finds
(the parent's blocksize must equal the child's content size; the child must be a File or raw
leaf), so a file that reads without error has exactly the size its root declares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..errors import DecodeError, FileshareError
from ..limits import MAX_BLOCK_SIZE, MAX_DAG_DEPTH
from .cid import CID, CODEC_NAMES, DAG_PB, RAW
from .dagpb import PBLink, decode_node
from .unixfs import DataType, UnixFSData, check_directory_links

GetBlock = Callable[[CID], Awaitable[bytes]]

_KINDS = {
    DataType.RAW: "file",  # legacy UnixFS Raw: read like a File
    DataType.DIRECTORY: "directory",
    DataType.FILE: "file",
    DataType.METADATA: "metadata",
    DataType.SYMLINK: "symlink",
    DataType.HAMT_SHARD: "hamt",
}


class NotAFileError(FileshareError):
    """The CID names something other than a file (a directory, symlink, ...)."""


@dataclass(frozen=True)
class Node:
    """One decoded block.

    ``kind``: "raw" (raw codec leaf), "file", "directory", "hamt", "symlink" or "metadata".
    ``data``: file bytes held inline (raw leaf, or UnixFS Data of a File; symlink target).
    ``filesize``: bytes of file content under this node (files only, else None).
    """

    cid: CID
    kind: str
    links: list[PBLink] = field(default_factory=list)
    data: bytes = b""
    filesize: int | None = None
    blocksizes: list[int] = field(default_factory=list)
    unixfs: UnixFSData | None = None


def decode_block(cid: CID, data: bytes) -> Node:
    """Decode and validate a (verified) block by its CID's codec; raises only ``DecodeError``."""
    if len(data) > MAX_BLOCK_SIZE:
        raise DecodeError(f"block {cid} of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
    if cid.codec == RAW:
        return Node(cid, "raw", data=data, filesize=len(data))
    if cid.codec != DAG_PB:
        name = CODEC_NAMES.get(cid.codec, f"0x{cid.codec:x}")
        raise DecodeError(f"block {cid}: codec {name} is not UnixFS (raw or dag-pb)")
    pb = decode_node(data)
    if pb.data is None:
        raise DecodeError(f"block {cid}: dag-pb node without UnixFS data")
    ux = UnixFSData.decode(pb.data)
    kind = _KINDS[DataType(ux.type)]
    if kind == "file":
        if len(ux.blocksizes) != len(pb.links):
            raise DecodeError(
                f"block {cid}: {len(pb.links)} links but {len(ux.blocksizes)} blocksizes"
            )
        for link in pb.links:
            if link.name:
                raise DecodeError(f"block {cid}: file link with a name {link.name!r}")
        size = ux.content_size
        if (ux.filesize or 0) != size:
            raise DecodeError(f"block {cid}: filesize {ux.filesize} but content adds up to {size}")
        return Node(cid, kind, pb.links, ux.data, size, list(ux.blocksizes), ux)
    if kind == "directory":
        check_directory_links(pb.links)
    elif kind == "symlink" and pb.links:
        raise DecodeError(f"block {cid}: symlink with links")
    return Node(cid, kind, pb.links, ux.data, None, list(ux.blocksizes), ux)


def child_cids(cid: CID, data: bytes) -> list[CID]:
    """The CIDs a block links to, in order (what a fetcher must get next)."""
    if cid.codec == RAW:
        return []
    return [link.hash for link in decode_block(cid, data).links]


async def iter_file_leaves(
    root: CID, get_block: GetBlock, *, max_depth: int = MAX_DAG_DEPTH
) -> AsyncIterator[Node]:
    """Yield, in file order, every node of a file DAG that holds inline bytes.

    ``get_block`` must return verified bytes. Raises ``NotAFileError`` if the root is not a file,
    ``DecodeError`` for a malformed or inconsistent DAG or one deeper than ``max_depth``.
    """
    node = decode_block(root, await get_block(root))
    if node.kind not in ("raw", "file"):
        raise NotAFileError(f"{root} is a {node.kind}, not a file")
    if node.data:
        yield node
    # depth-first: each frame is (node, depth, index of the next link to follow)
    stack: list[tuple[Node, int, int]] = [(node, 0, 0)] if node.links else []
    while stack:
        parent, depth, i = stack[-1]
        if i == len(parent.links):
            stack.pop()
            continue
        stack[-1] = (parent, depth, i + 1)
        if depth >= max_depth:
            raise DecodeError(f"file DAG under {root} is deeper than {max_depth} levels")
        link = parent.links[i]
        child = decode_block(link.hash, await get_block(link.hash))
        if child.kind not in ("raw", "file"):
            raise DecodeError(f"file node {parent.cid} links to a {child.kind} node {child.cid}")
        if child.filesize != parent.blocksizes[i]:
            raise DecodeError(
                f"file node {parent.cid} says child {child.cid} holds {parent.blocksizes[i]} "
                f"bytes, but it holds {child.filesize}"
            )
        if child.data:
            yield child
        if child.links:
            stack.append((child, depth + 1, 0))


async def read_file(
    root: CID, get_block: GetBlock, *, max_depth: int = MAX_DAG_DEPTH
) -> AsyncIterator[bytes]:
    """Yield the bytes of the file at ``root`` in order (see ``iter_file_leaves`` for errors)."""
    async for node in iter_file_leaves(root, get_block, max_depth=max_depth):
        yield node.data


async def file_size(root: CID, get_block: GetBlock) -> int:
    """The size a file's root declares (checked against the DAG as it is read)."""
    node = decode_block(root, await get_block(root))
    if node.filesize is None:
        raise NotAFileError(f"{root} is a {node.kind}, not a file")
    return node.filesize
