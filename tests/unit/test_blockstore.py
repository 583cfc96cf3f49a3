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
from fileshare.content.smallblocks import SMALL_BLOCK_MAX
from fileshare.errors import FileshareError, LimitExceeded, NotFound, VerificationError
from fileshare.limits import MAX_BLOCK_SIZE

from ..storeutil import corrupt_block


def raw(data: bytes, hash_code: int = BLAKE3) -> CID:
    return CID.from_data(RAW, data, hash_code)


def all_files(root: Path) -> list[Path]:
    """Block files (and temp files): everything but the small-block database."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent != root)


def big(n: int = 1) -> bytes:
    """Random bytes one past the small-block limit: stored as a file."""
    return os.urandom(SMALL_BLOCK_MAX + n)


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
    assert store.stats_sync().blocks == 1 and all_files(store.root) == []  # one row
    large = big()
    large_raw = raw(large, SHA2_256)
    store.put_sync(large_raw, large)
    assert store.get_sync(CID(0, DAG_PB, large_raw.multihash)) == large
    assert len(all_files(store.root)) == 1 and store.stats_sync().blocks == 2


def test_both_hashes_verified(store: Blockstore) -> None:
    for code in (BLAKE3, SHA2_256):
        data = f"data {code}".encode()
        cid = raw(data, code)
        store.put_sync(cid, data)
        assert store.get_sync(cid) == data


@pytest.mark.parametrize("size", [5000, SMALL_BLOCK_MAX + 5000], ids=["row", "file"])
def test_corrupt_block_detected_by_get(store: Blockstore, size: int) -> None:
    data = os.urandom(size)
    cid = raw(data)
    store.put_sync(cid, data)
    assert store.path_for(cid).exists() == (size > SMALL_BLOCK_MAX)
    corrupt_block(store, cid)
    with pytest.raises(VerificationError) as info:
        store.get_sync(cid)
    message = str(info.value)
    assert str(cid) in message and "corrupt" in message and "\n" not in message
    damaged = store.get_sync(cid, verify=False)
    assert len(damaged) == size and damaged != data


def test_oversized_file_on_disk_is_corrupt(store: Blockstore) -> None:
    data = big()
    cid = raw(data)
    store.put_sync(cid, data)
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
    small = [(raw(d), d) for d in (os.urandom(64) for _ in range(50))]
    large = [(raw(d), d) for d in (big(i) for i in range(1, 6))]
    blocks = small + large
    assert store.put_many_sync(blocks, sync=True) == 55
    assert store.put_many_sync(blocks) == 0
    files = all_files(store.root)
    assert len(files) == 5  # the small ones are rows
    assert store.stats_sync().blocks == 55
    assert store.stats_sync().bytes == sum(len(d) for _, d in blocks)
    for f in files:
        assert f.parent.parent == store.root
        assert f.parent.name == f.name[-3:-1]  # next-to-last/2 shard
        assert not f.name.endswith(".tmp")
    assert sorted(c.multihash for c in store) == sorted(c.multihash for c, _ in blocks)


def test_wrong_size_block_is_rewritten(store: Blockstore) -> None:
    data = big()
    cid = raw(data)
    store.put_sync(cid, data)
    store.path_for(cid).write_bytes(data[:5])  # truncated by a crash
    assert store.put_sync(cid, data) is True
    assert store.get_sync(cid) == data


def test_small_blocks_stored_as_files_by_older_versions(store: Blockstore) -> None:
    """A small block found as a file is served; a truncated one moves to a row on put."""
    data = b"stored before small blocks were rows"
    cid = raw(data)
    path = store.path_for(cid)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert store.has_sync(cid) and store.get_sync(cid) == data
    assert store.size_sync(cid) == len(data)
    assert store.put_sync(cid, data) is False
    assert [c.multihash for c in store] == [cid.multihash]
    path.write_bytes(data[:5])
    assert store.put_sync(cid, data) is True
    assert not path.exists() and store.get_sync(cid) == data
    assert store.delete_sync(cid) and not store.has_sync(cid)


def test_small_blocks_persist_and_are_shared_by_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    blocks = [(raw(d), d) for d in (os.urandom(100 + i) for i in range(400))]
    first = Blockstore(tmp_path / "blocks")
    with ThreadPoolExecutor(8) as pool:
        added = sum(pool.map(lambda i: first.put_many_sync(blocks[i::8]), range(8)))
        assert added == 400
        got = list(pool.map(lambda b: first.get_sync(b[0]), blocks))
    assert got == [d for _, d in blocks]
    first.close()
    with pytest.raises(FileshareError, match="closed"):
        first.has_sync(blocks[0][0])
    again = Blockstore(tmp_path / "blocks")  # another process would see the same
    assert again.sizes_sync([c.multihash for c, _ in blocks[:3]]) == {
        c.multihash: len(d) for c, d in blocks[:3]
    }
    assert again.stats_sync().blocks == 400


def test_failed_write_leaves_nothing(store: Blockstore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = big()
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
    data = big()
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
