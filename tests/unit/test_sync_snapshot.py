"""Snapshot codec and signing: canonical round trips, strict decoding, acceptance rules, the DAG."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.content.builder import build_dag, chunk_bytes
from fileshare.content.cid import CID, DAG_PB, RAW
from fileshare.content.hamt import HAMT_SHARD_THRESHOLD, hamt_entries
from fileshare.content.layout import make_layout
from fileshare.content.reader import decode_block
from fileshare.content.unixfs import decode_directory
from fileshare.errors import DecodeError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.limits import SYNC_MAX_FILE_SIZE
from fileshare.sync.folder import FolderConfig, format_invite, parse_invite
from fileshare.sync.snapshot import (
    Entry,
    Snapshot,
    SnapshotRejected,
    accept_snapshot,
    build_tree,
    decode_signed,
    decode_snapshot,
    encode_snapshot,
    sign_snapshot,
)
from fileshare.sync.version import Order, Version

KEY_A = PrivateKey.from_seed(b"\x0a" * 32)
KEY_B = PrivateKey.from_seed(b"\x0b" * 32)
A = PeerId.from_public_key(KEY_A.public_key())
B = PeerId.from_public_key(KEY_B.public_key())
FOLDER = b"F" * 16
CID1 = CID.from_data(RAW, b"one")
CID2 = CID.from_data(RAW, b"two")


def entry(path: str, cid: CID | None = CID1, n: int = 1, by: PeerId = A) -> Entry:
    size = 3 if cid else 0
    return Entry(
        path, cid, size, 1_700_000_000 * 10**9, 0o644 if cid else 0, size, by, Version.of({by: n})
    )


def snap(*entries: Entry, author: PeerId = A) -> Snapshot:
    root, _ = build_tree(entries)
    version = Version()
    for e in entries:
        version = version.merge(e.version)
    return Snapshot(FOLDER, author, version, tuple(entries), root, 123)


def test_round_trip_and_canonical() -> None:
    s = snap(entry("b/c.txt"), entry("a.txt", CID2, 2), entry("gone", None, 3))
    data = encode_snapshot(s)
    back = decode_snapshot(data)
    assert encode_snapshot(back) == data
    assert [e.path for e in back.entries] == ["a.txt", "b/c.txt", "gone"]
    assert back.by_path()["gone"].deleted


def test_non_canonical_rejected() -> None:
    data = encode_snapshot(snap(entry("a")))
    with pytest.raises(DecodeError):
        decode_snapshot(data + b"\x30\x00")  # created written twice


def test_rejects_bad_content() -> None:
    for bad in (
        entry("../x"),
        entry("/abs"),
        entry(".fileshare/x"),
        dataclasses.replace(entry("big"), size=SYNC_MAX_FILE_SIZE + 1),
        dataclasses.replace(entry("noversion"), version=Version()),
    ):
        data = encode_snapshot(Snapshot(FOLDER, A, Version(), (bad,)))
        with pytest.raises(DecodeError):
            decode_snapshot(data)
    clash = Snapshot(FOLDER, A, Version(), (entry("a"), entry("a/b")))
    with pytest.raises(DecodeError):
        decode_snapshot(encode_snapshot(clash))


def test_sign_accept_and_reject() -> None:
    s = snap(entry("x"))
    signed = decode_signed(sign_snapshot(s, KEY_A))
    assert accept_snapshot(signed, FOLDER, {A}) == s
    with pytest.raises(SnapshotRejected):
        accept_snapshot(signed, FOLDER, {B})  # not a writer
    with pytest.raises(SnapshotRejected):
        accept_snapshot(signed, b"G" * 16, {A})  # another folder
    forged = dataclasses.replace(signed, signature=KEY_B.sign(b"x" * 10))
    with pytest.raises(SnapshotRejected):
        accept_snapshot(forged, FOLDER, {A})
    wrong_root = dataclasses.replace(s, root=CID.from_data(DAG_PB, b"other"))
    signed2 = decode_signed(sign_snapshot(wrong_root, KEY_A))
    with pytest.raises(SnapshotRejected):
        accept_snapshot(signed2, FOLDER, {A})
    with pytest.raises(ValueError):
        sign_snapshot(s, KEY_B)  # author is A


async def test_directory_dag_is_unixfs() -> None:
    layout = make_layout(chunk_size=4)
    data = b"hello world, a file of several chunks"
    froot, fblocks = build_dag(chunk_bytes(data, 4), layout)
    tsize = sum(len(b.data) for b in fblocks)
    e = Entry("d/e/f.bin", froot, len(data), 0, 0o644, tsize, A, Version.of({A: 1}))
    root, blocks = build_tree([e, entry("top")])
    by_cid = {b.cid: b.data for b in blocks}
    assert blocks[-1].cid == root
    _, links = decode_directory(by_cid[root])
    assert [link.name for link in links] == ["d", "top"]
    d = links[0]
    _, dlinks = decode_directory(by_cid[d.hash])
    _, elinks = decode_directory(by_cid[dlinks[0].hash])
    assert elinks[0].hash == froot and elinks[0].tsize == tsize
    assert dlinks[0].tsize == len(by_cid[dlinks[0].hash]) + tsize
    assert d.tsize == len(by_cid[d.hash]) + dlinks[0].tsize
    assert decode_block(root, by_cid[root]).kind == "directory"
    await trio.lowlevel.checkpoint()


def test_large_directories_are_sharded() -> None:
    """A directory whose plain node would pass the threshold becomes a HAMT; smaller ones stay
    plain; every entry is reachable either way and the tree is the same for the same entries."""
    small = [entry(f"d/f{i:05d}") for i in range(200)]
    root, blocks = build_tree(small)
    by_cid = {b.cid: b.data for b in blocks}
    d = decode_directory(by_cid[root])[1][0]
    assert decode_block(d.hash, by_cid[d.hash]).kind == "directory"

    big = [entry(f"d/f{i:05d}") for i in range(6000)] + [entry("top")]
    root, blocks = build_tree(big)
    assert build_tree(list(reversed(big)))[0] == root  # order of entries does not matter
    by_cid = {b.cid: b.data for b in blocks}
    assert max(len(b.data) for b in blocks) <= HAMT_SHARD_THRESHOLD
    _, links = decode_directory(by_cid[root])
    d = next(lk for lk in links if lk.name == "d")
    assert decode_block(d.hash, by_cid[d.hash]).kind == "hamt"
    names = {lk.name for lk in hamt_entries(by_cid[d.hash], by_cid.__getitem__)}
    assert names == {f"f{i:05d}" for i in range(6000)}
    shards = [b for b in blocks if decode_block(b.cid, b.data).kind == "hamt"]
    assert d.tsize == sum(len(b.data) for b in shards) + sum(e.tsize for e in big[:-1])


def test_version_vectors() -> None:
    a1 = Version.of({A: 1})
    ab = Version.of({A: 1, B: 1})
    assert ab.compare(a1) == Order.NEWER and a1.compare(ab) == Order.OLDER
    assert Version.of({A: 2}).compare(ab) == Order.CONCURRENT
    assert a1.compare(Version.of([(A, 1)])) == Order.EQUAL
    assert ab.merge(Version.of({A: 5})).as_dict() == {A: 5, B: 1}


def test_invite_round_trip_and_validation() -> None:
    cfg = FolderConfig.create(A, [B])
    text = format_invite(cfg, ["/ip4/127.0.0.1/tcp/4001/p2p/" + str(A)])
    inv = parse_invite(text)
    assert inv.config == cfg and str(inv.addrs[0]).endswith(str(A))
    assert " " not in text and "\n" not in text
    for bad in ("", "fsinvite1", "nope", text + "!", text.upper(), text[:-3]):
        with pytest.raises(DecodeError):
            parse_invite(bad)


# --- property tests ---
peers = st.sampled_from([A, B])
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\:"),
    min_size=1,
    max_size=10,
).filter(lambda s: s not in (".", "..", ".fileshare"))
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
versions = st.dictionaries(peers, st.integers(1, 2**63), min_size=1).map(Version.of)
entries = st.builds(
    Entry,
    path=paths,
    cid=st.one_of(st.none(), st.just(CID1), st.just(CID2)),
    size=st.just(0),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
    mode=st.integers(0, 0o777),
    tsize=st.just(0),
    modified_by=peers,
    version=versions,
).map(lambda e: dataclasses.replace(e, mode=0) if e.cid is None else e)


@settings(max_examples=200, deadline=None)
@given(st.lists(entries, max_size=8, unique_by=lambda e: e.path), peers, st.integers(0, 2**40))
def test_codec_round_trip(es: list[Entry], author: PeerId, created: int) -> None:
    live = {e.path for e in es if e.cid}
    if any(
        "/".join(e.path.split("/")[:i]) in live
        for e in es
        if e.cid
        for i in range(1, e.path.count("/") + 1)
    ):
        return  # a file where a directory is needed: not a valid tree
    s = Snapshot(FOLDER, author, Version.of({author: 1}), tuple(es), CID2, created)
    data = encode_snapshot(s)
    back = decode_snapshot(data)
    assert encode_snapshot(back) == data
    assert back.by_path() == s.by_path()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_decode_error(data: bytes) -> None:
    for fn in (decode_snapshot, decode_signed):
        with contextlib.suppress(DecodeError):
            fn(data)
    with contextlib.suppress(DecodeError):
        parse_invite("fsinvite1" + data.hex())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_snapshots_only_decode_error(data: st.DataObject) -> None:
    raw = bytearray(sign_snapshot(snap(entry("a/b"), entry("c", CID2, 2)), KEY_A))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        decode_signed(bytes(raw))
