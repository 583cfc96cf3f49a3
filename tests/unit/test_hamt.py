"""Sharded (HAMT) directories and their murmur3 bucket hash: build, read back, refuse bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.content import hamt
from fileshare.content.cid import BLAKE3, CID, DAG_PB, RAW, SHA2_256
from fileshare.content.dagpb import PBLink, PBNode, decode_node, encode_node
from fileshare.content.hamt import build_hamt, hamt_entries, hamt_lookup
from fileshare.content.murmur3 import murmur3_x64_64
from fileshare.content.reader import decode_block
from fileshare.content.unixfs import HAMTShard, UnixFSData
from fileshare.errors import DecodeError

# murmur3-x64-64 as @multiformats/murmur3 2.2.8 (the JS HAMT's hash) computes it
MURMUR_VECTORS = {
    "": "0000000000000000",
    "a": "85555565f6597889",
    "hello": "cbd8a7b341bd9b02",
    "470.txt": "006e88df5847e67c",  # the UnixFS spec's example: buckets 00, then 6E
    "abcdefghijklmnopq": "7564747f88bda657",  # a 16-byte block and a 1-byte tail
    "x" * 31: "887b5e1ecbc9ba74",
}


def test_murmur3_vectors() -> None:
    for text, digest in MURMUR_VECTORS.items():
        assert murmur3_x64_64(text.encode()).hex() == digest


def entries(n: int, prefix: str = "file-") -> list[PBLink]:
    return [
        PBLink(CID.from_data(RAW, f"{prefix}{i}".encode(), SHA2_256), f"{prefix}{i}.txt", 7 + i)
        for i in range(n)
    ]


def test_build_read_back_and_resolve() -> None:
    links = entries(3000)
    root, tsize, blocks = build_hamt(links, BLAKE3)
    store = {b.cid: b.data for b in blocks}
    assert blocks[-1].cid == root and root.codec == DAG_PB
    assert tsize == sum(len(b.data) for b in blocks) + sum(lk.tsize or 0 for lk in links)
    node = decode_block(root, store[root])
    assert node.kind == "hamt"
    ux = UnixFSData.decode(decode_node(store[root]).data or b"")
    assert (ux.type, ux.hashtype, ux.fanout) == (HAMTShard, 0x22, 256)
    assert len(ux.data) == 32  # 3000 names fill all 256 root buckets
    listed = sorted(hamt_entries(store[root], store.__getitem__), key=lambda lk: lk.name or "")
    assert listed == sorted(links, key=lambda lk: lk.name or "")
    for link in links[::97]:
        found, passed = hamt_lookup(store[root], link.name or "", store.__getitem__)
        assert found == link and all(c in store for c in passed)
    assert hamt_lookup(store[root], "missing.txt", store.__getitem__)[0] is None
    for b in blocks:  # every shard: links in bucket order, one link per occupied bucket
        shard = decode_node(b.data)
        names = [lk.name or "" for lk in shard.links]
        assert names == sorted(names)
        bits = int.from_bytes(UnixFSData.decode(shard.data or b"").data, "big")
        assert {int(n[:2], 16) for n in names} == {i for i in range(256) if bits >> i & 1}


def test_small_and_single_entry_directories() -> None:
    one = entries(1)
    _, _, blocks = build_hamt(one, SHA2_256)
    assert len(blocks) == 1
    assert [lk.name for lk in hamt_entries(blocks[0].data, lambda c: b"")] == [one[0].name]
    _, _, blocks = build_hamt([], SHA2_256)
    assert list(hamt_entries(blocks[0].data, lambda c: b"")) == []


def test_bad_names_duplicates_and_full_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    cid = CID.from_data(RAW, b"x")
    for bad in ("", ".", "..", "a/b", "nul\x00"):
        with pytest.raises(ValueError):
            build_hamt([PBLink(cid, bad, 1)], SHA2_256)
    with pytest.raises(ValueError, match="duplicate"):
        build_hamt([PBLink(cid, "same", 1), PBLink(cid, "same", 1)], SHA2_256)
    # names whose 64-bit hashes are equal cannot be told apart by the trie: refused, not looped on
    monkeypatch.setattr(hamt, "murmur3_x64_64", lambda data: b"\x07" * 8)
    with pytest.raises(ValueError, match="collide"):
        build_hamt([PBLink(cid, "a", 1), PBLink(cid, "b", 1)], SHA2_256)


def test_malformed_shards_raise_decode_error() -> None:
    cid = CID.from_data(RAW, b"x")

    def shard(links: list[PBLink], **ux: object) -> bytes:
        fields = {"hashtype": 0x22, "fanout": 256} | ux
        return encode_node(PBNode(links, UnixFSData(HAMTShard, b"\x01", **fields).encode()))  # type: ignore[arg-type]

    cases = [
        shard([PBLink(cid, "zz-name", 1)]),  # not a hex bucket
        shard([PBLink(cid, "0", 1)]),  # too short
        shard([PBLink(cid, "00..", 1)]),  # an entry name a directory cannot hold
        shard([], hashtype=0x12),  # not murmur3
        shard([], fanout=16),  # a fanout we do not read
        encode_node(PBNode([], UnixFSData(1).encode())),  # a plain directory
    ]
    for data in cases:
        with pytest.raises(DecodeError):
            list(hamt_entries(data, lambda c: b""))
    # a child shard that links back to itself is bounded by the hash's depth
    loop = shard([PBLink(cid, "00", 1)])
    with pytest.raises(DecodeError):
        list(hamt_entries(loop, lambda c: loop))
    found, passed = hamt_lookup(loop, "470.txt", lambda c: loop)  # bucket 00, then 6E: absent
    assert found is None and len(passed) == 1  # a lookup reads one shard per hash byte at most


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and "\0" not in s
                                                        and s not in (".", "..")),
                unique=True, max_size=300))  # fmt: skip
def test_any_names_round_trip(names: list[str]) -> None:
    links = [PBLink(CID.from_data(RAW, n.encode()), n, len(n)) for n in names]
    root, _, blocks = build_hamt(links, SHA2_256)
    store = {b.cid: b.data for b in blocks}
    got = {lk.name: lk for lk in hamt_entries(store[root], store.__getitem__)}
    assert got == {lk.name: lk for lk in links}
