"""Layouts, the streaming DagBuilder and the DAG reader: shapes, round trips, bad DAGs."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fileshare.content.builder import Block, DagBuilder, build_dag, chunk_bytes
from fileshare.content.cid import BLAKE3, CID, DAG_PB, RAW, SHA2_256
from fileshare.content.dagpb import PBLink, PBNode, encode_node
from fileshare.content.layout import PROFILES, Layout, make_layout
from fileshare.content.reader import (
    NotAFileError,
    child_cids,
    decode_block,
    file_size,
    read_file,
)
from fileshare.content.unixfs import Directory, File, UnixFSData, encode_directory, file_node
from fileshare.errors import DecodeError
from fileshare.limits import MAX_CHUNK_SIZE, MAX_DAG_DEPTH

# --- layouts ---


def test_profiles() -> None:
    v1, v0 = PROFILES["unixfs-v1-2025"], PROFILES["unixfs-v0-2015"]
    assert (v1.chunk_size, v1.max_links, v1.raw_leaves, v1.cid_version) == (1 << 20, 1024, True, 1)
    assert (v0.chunk_size, v0.max_links, v0.raw_leaves, v0.cid_version) == (
        256 << 10,
        174,
        False,
        0,
    )
    assert v1.hash_code == v0.hash_code == SHA2_256


def test_make_layout() -> None:
    default = make_layout()
    assert default.hash_code == BLAKE3 and default.chunk_size == 1 << 20 and default.raw_leaves
    legacy = make_layout("unixfs-v0-2015")
    assert legacy.hash_code == BLAKE3 and legacy.cid_version == 1 and not legacy.raw_leaves
    assert make_layout("unixfs-v0-2015", "sha2-256") == PROFILES["unixfs-v0-2015"]
    assert make_layout(chunk_size=4096).chunk_size == 4096


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"profile": "nope"}, "unknown profile"),
        ({"hash_name": "md5"}, "unknown hash"),
        ({"chunk_size": 0}, "chunk size"),
        ({"chunk_size": MAX_CHUNK_SIZE + 1}, "chunk size"),
    ],
)
def test_make_layout_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_layout(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 1024, "max_links": 1},
        {"chunk_size": 1024, "max_links": 4, "cid_version": 0},  # blake3 + v0
        {"chunk_size": 1024, "max_links": 4, "hash_code": SHA2_256, "cid_version": 0},  # raw
        {"chunk_size": 1024, "max_links": 4, "cid_version": 2},
        {"chunk_size": 1024, "max_links": 4, "hash_code": 0x13},
    ],
)
def test_layout_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Layout(**kwargs)  # type: ignore[arg-type]


# --- builder ---

SMALL = Layout(chunk_size=16, max_links=3)


def test_raw_leaf_is_the_chunk_object() -> None:
    chunk = b"x" * 16
    block = DagBuilder(SMALL).leaf_block(chunk)
    assert block.data is chunk
    assert block.cid == CID.from_data(RAW, chunk, BLAKE3)


def test_empty_file_and_single_chunk() -> None:
    root, blocks = build_dag([], SMALL)
    assert root == CID.from_data(RAW, b"") and [b.data for b in blocks] == [b""]
    builder = DagBuilder(SMALL)
    assert builder.add_chunk(b"") == []
    assert builder.finish()[0] == root
    builder = DagBuilder(SMALL)
    [leaf] = builder.add_chunk(b"hello")
    root, rest = builder.finish()
    assert root == leaf.cid and rest == [] and builder.size == 5


def test_dag_pb_leaves_single_chunk() -> None:
    layout = replace(SMALL, raw_leaves=False)
    root, blocks = build_dag([b"abc"], layout)
    node = decode_block(root, blocks[0].data)
    assert [b.cid for b in blocks] == [root] and root.codec == DAG_PB
    assert node.kind == "file" and node.data == b"abc" and node.filesize == 3


def test_inner_nodes_stream_out_as_soon_as_complete() -> None:
    builder = DagBuilder(SMALL)
    returned = [builder.add_chunk(bytes([i]) * 16) for i in range(9)]
    # after 3 leaves the first node is complete; after 9, three nodes and their parent
    assert [len(r) for r in returned] == [1, 1, 2, 1, 1, 2, 1, 1, 3]
    root, rest = builder.finish()
    assert rest == [] and root == returned[-1][-1].cid  # 9 = 3*3 leaves: a full tree
    node = decode_block(root, returned[-1][-1].data)
    assert node.blocksizes == [48, 48, 48] and node.filesize == 144


def test_finish_returns_at_most_one_node_per_level() -> None:
    builder = DagBuilder(SMALL)
    for i in range(3**5 + 1):  # 5 full levels, then one more leaf: a 6th level on top
        builder.add_chunk(i.to_bytes(16, "big"))
    root, rest = builder.finish()
    assert len(rest) == 6 and rest[-1].cid == root
    # every unfinished level is a chain of single-link nodes above the last leaf
    assert [len(decode_block(b.cid, b.data).links) for b in rest] == [1, 1, 1, 1, 1, 2]


def test_add_leaf_with_leaves_hashed_in_threads() -> None:
    layout = Layout(chunk_size=1024, max_links=5, hash_code=SHA2_256)
    data = random.Random(1).randbytes(1024 * 37 + 5)
    chunks = chunk_bytes(data, 1024)
    expected = build_dag(chunks, layout)
    builder = DagBuilder(layout)
    blocks: list[Block] = []
    with ThreadPoolExecutor(4) as pool:
        for leaf, chunk in zip(pool.map(builder.leaf_block, chunks), chunks, strict=True):
            blocks.append(leaf)
            blocks += builder.add_leaf(leaf, len(chunk))
    root, rest = builder.finish()
    assert (root, blocks + rest) == expected


def test_misuse() -> None:
    builder = DagBuilder(SMALL)
    with pytest.raises(ValueError):
        builder.add_chunk(b"x" * 17)
    builder.finish()
    with pytest.raises(RuntimeError):
        builder.add_chunk(b"x")
    with pytest.raises(RuntimeError):
        builder.finish()


# --- reading ---


def _store(blocks: list[Block]) -> dict[CID, bytes]:
    return {b.cid: b.data for b in blocks}


async def _read(root: CID, store: dict[CID, bytes], **kw: int) -> bytes:
    async def get(cid: CID) -> bytes:
        await trio.lowlevel.checkpoint()
        return store[cid]

    return b"".join([chunk async for chunk in read_file(root, get, **kw)])


layouts = st.builds(
    Layout,
    chunk_size=st.integers(1, 64),
    max_links=st.integers(2, 6),
    hash_code=st.sampled_from([BLAKE3, SHA2_256]),
    raw_leaves=st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts, st.integers(0, 3000), st.booleans())
def test_read_file_round_trip(layout: Layout, size: int, v0: bool) -> None:
    if v0:
        layout = replace(layout, hash_code=SHA2_256, raw_leaves=False, cid_version=0)
    data = random.Random(size).randbytes(size)
    root, blocks = build_dag(chunk_bytes(data, layout.chunk_size), layout)
    store = _store(blocks)
    assert trio.run(_read, root, store) == data
    assert trio.run(file_size, root, _getter(store)) == size
    # breadth-first walk by child_cids reaches exactly the stored blocks
    seen, frontier = {root}, [root]
    while frontier:
        nxt = [c for cid in frontier for c in child_cids(cid, store[cid]) if c not in seen]
        seen.update(nxt)
        frontier = nxt
    assert seen == set(store)


def _getter(store: dict[CID, bytes]) -> Callable[[CID], Awaitable[bytes]]:
    async def get(cid: CID) -> bytes:
        return store[cid]

    return get


# --- bad DAGs ---


def _raw(data: bytes) -> Block:
    return Block(CID.from_data(RAW, data), data)


def _pb(node: PBNode) -> Block:
    data = encode_node(node)
    return Block(CID.from_data(DAG_PB, data), data)


def _file(children: list[Block], sizes: list[int], filesize: int | None = None) -> Block:
    links = [PBLink(c.cid, "", len(c.data)) for c in children]
    if filesize is None:
        return _pb(file_node(links, sizes))
    ux = UnixFSData(File, filesize=filesize, blocksizes=tuple(sizes))
    return _pb(PBNode(links, ux.encode()))


def test_wrong_blocksize_for_child() -> None:
    leaf = _raw(b"abcd")
    root = _file([leaf], [5])  # self-consistent node, but the child holds 4 bytes
    with pytest.raises(DecodeError, match="holds 5 bytes, but it holds 4"):
        trio.run(_read, root.cid, _store([leaf, root]))


def test_blocksizes_count_mismatch() -> None:
    leaf = _raw(b"abcd")
    links = [PBLink(leaf.cid, "", 4)]
    bad = _pb(PBNode(links, UnixFSData(File, filesize=8, blocksizes=(4, 4)).encode()))
    with pytest.raises(DecodeError, match="1 links but 2 blocksizes"):
        decode_block(bad.cid, bad.data)


def test_wrong_filesize() -> None:
    leaf = _raw(b"abcd")
    bad = _file([leaf], [4], filesize=5)
    with pytest.raises(DecodeError, match="filesize 5"):
        decode_block(bad.cid, bad.data)
    inline = _pb(PBNode([], UnixFSData(File, b"abc", filesize=2).encode()))
    with pytest.raises(DecodeError, match="filesize"):
        trio.run(_read, inline.cid, _store([inline]))


def test_named_file_link() -> None:
    leaf = _raw(b"abcd")
    bad = _pb(
        PBNode([PBLink(leaf.cid, "x", 4)], UnixFSData(File, filesize=4, blocksizes=(4,)).encode())
    )
    with pytest.raises(DecodeError, match="name"):
        decode_block(bad.cid, bad.data)


def test_link_to_directory_inside_a_file() -> None:
    d = Block(CID.from_data(DAG_PB, raw := encode_directory([])), raw)
    root = _file([d], [0])
    with pytest.raises(DecodeError, match="links to a directory"):
        trio.run(_read, root.cid, _store([d, root]))


def test_root_is_a_directory() -> None:
    leaf = _raw(b"abcd")
    d = Block(CID.from_data(DAG_PB, raw := encode_directory([PBLink(leaf.cid, "f", 4)])), raw)
    with pytest.raises(NotAFileError, match="is a directory"):
        trio.run(_read, d.cid, _store([d, leaf]))
    node = decode_block(d.cid, d.data)
    assert node.kind == "directory" and node.links[0].name == "f"
    assert child_cids(d.cid, d.data) == [leaf.cid]
    assert decode_block(d.cid, d.data).unixfs == UnixFSData(Directory)


def test_depth_bound() -> None:
    top = leaf = _raw(b"z")
    blocks = [leaf]
    for _ in range(MAX_DAG_DEPTH + 1):
        top = _file([top], [1])
        blocks.append(top)
    store = _store(blocks)
    with pytest.raises(DecodeError, match="deeper than"):
        trio.run(_read, top.cid, store)
    assert trio.run(lambda: _read(top.cid, store, max_depth=MAX_DAG_DEPTH + 1)) == b"z"


def test_unsupported_codec_and_garbage() -> None:
    cid = CID.from_data(0x71, b"\xa0")  # dag-cbor
    with pytest.raises(DecodeError, match=r"dag-cbor|0x71"):
        decode_block(cid, b"\xa0")
    pb = CID.from_data(DAG_PB, b"")
    with pytest.raises(DecodeError, match="without UnixFS"):
        decode_block(pb, b"")


@given(st.binary(max_size=300))
def test_decode_block_arbitrary(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_block(CID.from_data(DAG_PB, data), data)
