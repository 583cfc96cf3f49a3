"""dag-pb and UnixFS codecs: spec vectors, strictness, round trips, arbitrary input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fileshare.content.cid import BLAKE3, CID, DAG_PB, RAW, SHA2_256
from fileshare.content.dagpb import PBLink, PBNode, decode_node, encode_node
from fileshare.content.unixfs import (
    DataType,
    Directory,
    File,
    UnixFSData,
    UnixTime,
    decode_directory,
    directory_node,
    encode_directory,
    encode_file_leaf,
    encode_symlink,
)
from fileshare.errors import DecodeError
from fileshare.limits import MAX_LINKS_PER_NODE

# --- dag-pb: vectors from the ipld codec fixtures listed in the UnixFS spec ---

IDENTITY_CID = bytes.fromhex("015500050001020304")  # raw, identity multihash of 00..04


@pytest.mark.parametrize(
    "hexbytes",
    [
        "",  # the empty node
        "0a050001020304",  # Data only
        "0a00",  # empty Data
        "120b0a09015500050001020304",  # link with Hash only
        "12160a090155000500010203041209736f6d65206e616d65",  # Hash + Name
        "120d0a090155000500010203041200",  # Hash + empty Name
        "12140a0901550005000102030418ffffffffffffff0f",  # Hash + Tsize
        "120d0a090155000500010203041800",  # Hash + zero Tsize
        "120b0a0901550005000102030412100a09015500050001020304120362617212100a090155000500010203041203666f6f",
        "120b0a09015500050001020304120e0a09015500050001020304120161120e0a09015500050001020304120161",
    ],
)
def test_codec_fixtures_round_trip(hexbytes: str) -> None:
    raw = bytes.fromhex(hexbytes)
    node = decode_node(raw)
    assert encode_node(node) == raw


def test_fixture_fields() -> None:
    node = decode_node(bytes.fromhex("12160a090155000500010203041209736f6d65206e616d65"))
    assert node.data is None
    assert node.links == [PBLink(CID.decode(IDENTITY_CID), "some name", None)]
    node = decode_node(bytes.fromhex("120d0a090155000500010203041200"))
    assert node.links[0].name == "" and node.links[0].tsize is None


def _ld(key: int, body: bytes) -> bytes:
    return bytes([key, len(body)]) + body


_HASH = _ld(0x0A, IDENTITY_CID)


def _link(name: str | None = None, tsize: int | None = 3) -> bytes:
    body = b"\x0a" + bytes([len(IDENTITY_CID)]) + IDENTITY_CID
    if name is not None:
        body += b"\x12" + bytes([len(name)]) + name.encode()
    if tsize is not None:
        body += b"\x18" + bytes([tsize])
    return b"\x12" + bytes([len(body)]) + body


def test_data_first_is_accepted_and_reencoded_links_first() -> None:
    data = b"\x0a\x02hi"
    node = decode_node(data + _link())
    assert node.data == b"hi" and len(node.links) == 1
    assert encode_node(node) == _link() + data


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_link() + b"\x0a\x01x" + _link(), "interleaved"),
        (b"\x0a\x01x\x0a\x01y", "duplicate"),
        (b"\x18\x01", "unexpected"),  # unknown field
        (b"\x08\x01", "unexpected"),  # Data as a varint
        (b"\x12\x02\x18\x01", "without a Hash"),
        (b"\x12\x03\x0a\x01\x00", "truncated|CID"),  # hash is not a CID
        (_ld(0x12, _ld(0x12, b"a") + _HASH), "order"),  # Name before Hash
        (_ld(0x12, _HASH + b"\x18\x01" + _ld(0x12, b"a")), "order"),  # Tsize before Name
        (_ld(0x12, _HASH + _HASH), "duplicated"),
        (_ld(0x12, _HASH + b"\x20\x01"), "unexpected"),  # field 4
        (_ld(0x12, _HASH + _ld(0x1A, b"")), "unexpected"),  # Tsize as bytes
        (b"\x12\x05\x0a\x09", "past the end"),
        (b"\x0a\x05ab", "past the end"),
        (_ld(0x12, _HASH + _ld(0x12, b"\xff")), "UTF-8"),
    ],
)
def test_strict_decoding(raw: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_node(raw)


def test_link_count_limit() -> None:
    one = _link()
    decode_node(one * MAX_LINKS_PER_NODE)
    with pytest.raises(DecodeError, match="links"):
        decode_node(one * (MAX_LINKS_PER_NODE + 1))


cids = st.builds(
    lambda codec, code, digest, v0: (
        CID.from_digest(DAG_PB, SHA2_256, digest, version=0)
        if v0
        else CID.from_digest(codec, code, digest)
    ),
    st.sampled_from([RAW, DAG_PB]),
    st.sampled_from([SHA2_256, BLAKE3]),
    st.binary(min_size=32, max_size=32),
    st.booleans(),
)
links = st.builds(
    PBLink,
    cids,
    st.none() | st.text(max_size=20),
    st.none() | st.integers(min_value=0, max_value=(1 << 64) - 1),
)
nodes = st.builds(PBNode, st.lists(links, max_size=8), st.none() | st.binary(max_size=64))


@given(nodes)
def test_dagpb_round_trip(node: PBNode) -> None:
    assert decode_node(encode_node(node)) == node


@given(st.binary(max_size=200))
def test_dagpb_arbitrary_bytes(data: bytes) -> None:
    try:
        node = decode_node(data)
    except DecodeError:
        return
    assert isinstance(node, PBNode)


@given(nodes, st.data())
def test_dagpb_mutated_bytes(node: PBNode, data: st.DataObject) -> None:
    raw = bytearray(encode_node(node))
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        decode_node(bytes(raw))


# --- UnixFS ---


def test_unixfs_known_encodings() -> None:
    # the empty file leaf every importer makes: Type=File, filesize=0
    assert UnixFSData(File, filesize=0).encode() == b"\x08\x02\x18\x00"
    assert encode_file_leaf(b"") == encode_node(PBNode([], b"\x08\x02\x18\x00"))
    # Directory: just the type
    assert UnixFSData(Directory).encode() == b"\x08\x01"
    # blocksizes are written unpacked (as the reference importers do)
    inner = UnixFSData(File, filesize=300, blocksizes=(256, 44)).encode()
    assert inner == b"\x08\x02\x18\xac\x02\x20\x80\x02\x20\x2c"


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 70000])
def test_file_leaf_fast_path_matches_general_encoding(n: int) -> None:
    chunk = bytes(range(256)) * (n // 256) + bytes(n % 256)
    general = encode_node(PBNode([], UnixFSData(File, chunk, len(chunk)).encode()))
    assert encode_file_leaf(chunk) == general


def test_unixfs_packed_blocksizes_accepted() -> None:
    packed = b"\x08\x02\x18\x03\x22\x02\x01\x02"
    assert UnixFSData.decode(packed).blocksizes == (1, 2)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "missing Type"),
        (b"\x18\x01", "missing Type"),
        (b"\x08\x09", "unknown data type"),
        (b"\x08\x02\x08\x02", "duplicate"),
        (b"\x08\x02\x12\x01", "past the end"),
        (b"\x0a\x00", "varint"),  # Type as bytes
        (b"\x08\x05\x30\x81\x10", "fanout"),  # fanout 2049
        (b"\x08\x02\x42\x07\x08\x01\x15\x00\x00\x00\x00", "nanoseconds"),  # nanos == 0
        (b"\x08\x02\x42\x05\x15\x01\x00\x00\x00", "Seconds"),
        (b"\x08\x02\x18" + b"\xff" * 9 + b"\x7f", "uint64"),  # 70-bit filesize
    ],
)
def test_unixfs_strict(raw: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        UnixFSData.decode(raw)


def test_unixfs_unknown_fields_skipped() -> None:
    assert UnixFSData.decode(b"\x08\x02\x18\x00\x48\x01").filesize == 0


def test_mtime_zero_nanos_stripped_and_negative_seconds() -> None:
    assert UnixTime(5, 0).encode() == UnixTime(5).encode()
    ux = UnixFSData(File, filesize=0, mtime=UnixTime(-1, 7), mode=0o644)
    assert UnixFSData.decode(ux.encode()) == ux


mtimes = st.none() | st.builds(
    UnixTime,
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.none() | st.integers(min_value=1, max_value=999_999_999),
)
unixfs = st.builds(
    UnixFSData,
    st.sampled_from(list(DataType)),
    st.binary(max_size=64),
    st.none() | st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.lists(st.integers(min_value=0, max_value=(1 << 64) - 1), max_size=10).map(tuple),
    st.none() | st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.none() | st.integers(min_value=0, max_value=1024),
    st.none() | st.integers(min_value=0, max_value=0xFFFFFFFF),
    mtimes,
)


@given(unixfs)
def test_unixfs_round_trip(ux: UnixFSData) -> None:
    assert UnixFSData.decode(ux.encode()) == ux


@given(st.binary(max_size=200))
def test_unixfs_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        UnixFSData.decode(data)


# --- directories ---


def _cid(i: int) -> CID:
    return CID.from_data(RAW, bytes([i]))


def test_directory_sorted_by_name_bytes() -> None:
    entries = [PBLink(_cid(i), name, 10 + i) for i, name in enumerate(["b", "a", "Z", "é", "aa"])]
    raw = encode_directory(entries)
    ux, got = decode_directory(raw)
    assert ux.type == Directory
    assert [link.name for link in got] == ["Z", "a", "aa", "b", "é"]
    assert {(link.name, link.hash, link.tsize) for link in got} == {
        (e.name, e.hash, e.tsize) for e in entries
    }


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\x00"])
def test_directory_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        directory_node([PBLink(_cid(1), name, 1)])
    raw = encode_node(PBNode([PBLink(_cid(1), name, 1)], UnixFSData(Directory).encode()))
    with pytest.raises(DecodeError):
        decode_directory(raw)


def test_directory_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        directory_node([PBLink(_cid(1), "x", 1), PBLink(_cid(2), "x", 1)])
    links = [PBLink(_cid(1), "x", 1), PBLink(_cid(2), "x", 1)]
    raw = encode_node(PBNode(links, UnixFSData(Directory).encode()))
    with pytest.raises(DecodeError, match="duplicate"):
        decode_directory(raw)


def test_decode_directory_rejects_files_and_keeps_wire_order() -> None:
    with pytest.raises(DecodeError, match="expected a directory"):
        decode_directory(encode_file_leaf(b"abc"))
    links = [PBLink(_cid(1), "b", 1), PBLink(_cid(2), "a", 1)]  # unsorted on the wire
    raw = encode_node(PBNode(links, UnixFSData(Directory).encode()))
    assert [link.name for link in decode_directory(raw)[1]] == ["b", "a"]


def test_symlink() -> None:
    node = decode_node(encode_symlink("../target"))
    assert node.data is not None
    ux = UnixFSData.decode(node.data)
    assert ux.type == DataType.SYMLINK and ux.data == b"../target"


def test_well_known_unixfs_cids() -> None:
    empty_dir = encode_directory([])
    assert str(CID(0, DAG_PB, CID.from_data(DAG_PB, empty_dir, SHA2_256).multihash)) == (
        "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    )
    assert str(CID.from_data(DAG_PB, empty_dir, SHA2_256)) == (
        "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
    )
    inlined = CID.parse("bafyaabakaieac")  # identity CID holding the empty directory
    assert inlined.digest == empty_dir
    inlined.verify(empty_dir)
    assert str(CID.from_data(DAG_PB, encode_file_leaf(b""), SHA2_256)) == (
        "bafybeif7ztnhq65lumvvtr4ekcwd2ifwgm3awq4zfr3srh462rwyinlb4y"
    )
