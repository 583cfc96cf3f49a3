"""Blockstore: put/get/has/delete, verification on read, atomic writes, iteration."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fileshare.content.blockstore import Blockstore, NoSpace, key_multihash, multihash_key
from fileshare.content.cid import BLAKE3, CID, DAG_PB, RAW, SHA2_256
from fileshare.errors import LimitExceeded, NotFound, VerificationError
from fileshare.limits import MAX_BLOCK_SIZE


def raw(data: bytes, hash_code: int = BLAKE3) -> CID:
    return CID.from_data(RAW, data, hash_code)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> Blockstore:
    return Blockstore(tmp_path / "blocks")


def test_put_get_has_delete(store: Blockstore) -> None:
    data = b"hello blocks"
    cid = raw(data)
    assert not store.has_sync(cid)
    assert store.put_sync(cid, data) is True
    assert store.has_sync(cid)
    assert store.get_sync(cid) == data
    assert store.put_sync(cid, data) is False  # already there
    assert store.delete_sync(cid) is True
    assert not store.has_sync(cid)
    assert store.delete_sync(cid) is False
    with pytest.raises(NotFound, match=str(cid)):
        store.get_sync(cid)


async def test_async_api(store: Blockstore) -> None:
    blocks = [(raw(bytes([i]) * 100), bytes([i]) * 100) for i in range(5)]
    assert await store.put_many(blocks) == 5
    for cid, data in blocks:
        assert await store.has(cid)
        assert await store.get(cid) == data
    assert await store.put(blocks[0][0], blocks[0][1]) is False
    assert await store.delete(blocks[0][0])
    assert not await store.has(blocks[0][0])
    stats = await store.stats()
    assert (stats.blocks, stats.bytes) == (4, 400)


def test_put_verifies_unless_told(store: Blockstore) -> None:
    cid = raw(b"right")
    with pytest.raises(VerificationError):
        store.put_sync(cid, b"wrong")
    assert not store.has_sync(cid)
    store.put_sync(cid, b"wrong", verified=True)  # the caller vouches; get still checks
    with pytest.raises(VerificationError, match=str(cid)):
        store.get_sync(cid)


def test_cid_versions_and_codecs_share_storage(store: Blockstore) -> None:
    data = b"\x0a\x02\x08\x01"  # any bytes: storage is keyed by multihash
    v1_raw = raw(data, SHA2_256)
    v1_pb = CID(1, DAG_PB, v1_raw.multihash)
    v0 = CID(0, DAG_PB, v1_raw.multihash)
    store.put_sync(v1_raw, data)
    assert store.has_sync(v1_pb) and store.has_sync(v0)
    assert store.get_sync(v0) == data
    assert len(all_files(store.root)) == 1


def test_both_hashes_verified(store: Blockstore) -> None:
    for code in (BLAKE3, SHA2_256):
        data = f"data {code}".encode()
        cid = raw(data, code)
        store.put_sync(cid, data)
        assert store.get_sync(cid) == data


def test_corrupt_file_detected_by_get(store: Blockstore) -> None:
    data = os.urandom(5000)
    cid = raw(data)
    store.put_sync(cid, data)
    path = store.path_for(cid)
    corrupted = bytearray(data)
    corrupted[1234] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    with pytest.raises(VerificationError) as info:
        store.get_sync(cid)
    message = str(info.value)
    assert str(cid) in message and "corrupt" in message and "\n" not in message
    assert store.get_sync(cid, verify=False) == bytes(corrupted)


def test_oversized_file_on_disk_is_corrupt(store: Blockstore) -> None:
    cid = raw(b"x")
    store.put_sync(cid, b"x")
    store.path_for(cid).write_bytes(b"\0" * (MAX_BLOCK_SIZE + 1))
    with pytest.raises(VerificationError, match="larger than"):
        store.get_sync(cid, verify=False)


def test_block_size_limit(store: Blockstore) -> None:
    data = b"\0" * (MAX_BLOCK_SIZE + 1)
    with pytest.raises(LimitExceeded):
        store.put_sync(raw(data), data, verified=True)
    exact = b"\1" * MAX_BLOCK_SIZE
    assert store.put_sync(raw(exact), exact)


def test_layout_sharded_and_no_temp_leftovers(store: Blockstore) -> None:
    blocks = [(raw(d), d) for d in (os.urandom(64) for _ in range(50))]
    assert store.put_many_sync(blocks, sync=True) == 50
    files = all_files(store.root)
    assert len(files) == 50
    for f in files:
        assert f.parent.parent == store.root
        assert f.parent.name == f.name[-3:-1]  # next-to-last/2 shard
        assert not f.name.endswith(".tmp")
    assert sorted(c.multihash for c in store) == sorted(c.multihash for c, _ in blocks)


def test_wrong_size_block_is_rewritten(store: Blockstore) -> None:
    data = b"truncated by a crash"
    cid = raw(data)
    store.put_sync(cid, data)
    store.path_for(cid).write_bytes(data[:5])
    assert store.put_sync(cid, data) is True
    assert store.get_sync(cid) == data


def test_failed_write_leaves_nothing(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"will not fit"
    cid = raw(data)

    def full(fd: int, buf: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fileshare.content.blockstore.os.write", full)
    with pytest.raises(NoSpace, match="no space left"):
        store.put_sync(cid, data)
    monkeypatch.undo()
    assert not store.has_sync(cid)
    assert all_files(store.root) == []


def test_temp_files_are_not_blocks_and_can_be_removed(store: Blockstore) -> None:
    data = b"real"
    cid = raw(data)
    store.put_sync(cid, data)
    stale = Path(f"{store.path_for(cid)}.999-1.tmp")
    stale.write_bytes(b"half")
    assert [c.multihash for c in store] == [cid.multihash]
    assert store.remove_temp_files_sync() == 1
    assert not stale.exists() and store.has_sync(cid)


@given(st.binary(min_size=0, max_size=64))
def test_multihash_key_round_trip(data: bytes) -> None:
    mh = raw(data).multihash
    key = multihash_key(mh)
    assert key == key.lower() and "=" not in key
    assert key_multihash(key) == mh
