"""Repo (metadata, pins, gc, verify, locking) and the import/export pipelines on top of it."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fileshare.content import ingest
from fileshare.content.blockstore import NoSpace
from fileshare.content.builder import build_dag, chunk_bytes
from fileshare.content.cid import CID, DAG_PB, RAW, SHA2_256
from fileshare.content.ingest import FileChanged, export_file, import_file
from fileshare.content.layout import Layout, make_layout
from fileshare.content.smallblocks import SmallBlocks
from fileshare.errors import FileshareError, NotFound, VerificationError
from fileshare.repo import Pin, Repo, RepoBusy

from ..storeutil import corrupt_block

SMALL = Layout(chunk_size=1024, max_links=4)  # 3+ levels for a few KiB
MIB = 1 << 20


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    with Repo.open(tmp_path / "repo") as r:
        yield r


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


# --- repository and pins ---
def test_open_creates_layout_and_persists_pins(tmp_path: Path) -> None:
    path = tmp_path / "r"
    with Repo.open(path) as repo:
        assert (path / "blocks").is_dir() and (path / "meta.sqlite").is_file()
        assert repo.identity_path == path / "identity.key"
        cid = CID.from_data(RAW, b"x")
        repo.add_pin(Pin(cid, name="x.txt", size=1, hash="blake3", profile="p", blocks=1))
    with Repo.open(path) as repo:
        (pin,) = repo.pins()
        assert (pin.cid, pin.name, pin.size, pin.hash, pin.blocks) == (cid, "x.txt", 1, "blake3", 1)
        assert pin.created > 0
        assert repo.get_pin(cid) == pin
        assert repo.unpin(cid) and not repo.unpin(cid)
        assert repo.pins() == [] and repo.get_pin(cid) is None


def test_repo_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileshareError):
        Repo.open(tmp_path / "f")


def test_lock_modes(repo: Repo) -> None:
    shared = repo.try_lock(exclusive=False)
    assert shared is not None
    second = repo.try_lock(exclusive=False)
    assert second is not None  # shared + shared is fine
    second.close()
    assert repo.try_lock(exclusive=True) is None
    with pytest.raises(RepoBusy):
        repo.lock(exclusive=True, timeout=0.1)
    shared.close()
    with repo.lock(exclusive=True):
        assert repo.try_lock(exclusive=False) is None


# --- import / export ---
@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 4 * 1024, 4 * 1024 + 1, 17 * 1024 + 5])
async def test_round_trip_matches_in_memory_builder(repo: Repo, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = write(tmp_path / "src.bin", data)
    result = await import_file(repo, src, SMALL)
    expected_root, expected_blocks = build_dag(chunk_bytes(data, SMALL.chunk_size), SMALL)
    assert result.root == expected_root
    assert result.size == size
    assert result.block_count == len(expected_blocks)
    out = tmp_path / "out.bin"
    exported = await export_file(repo, result.root, out)
    assert out.read_bytes() == data and exported.size == size
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("profile", "hash_name"),
    [("unixfs-v1-2025", "blake3"), ("unixfs-v1-2025", "sha2-256"), ("unixfs-v0-2015", "sha2-256")],
)
async def test_profiles(repo: Repo, tmp_path: Path, profile: str, hash_name: str) -> None:
    layout = make_layout(profile, hash_name)
    data = os.urandom(2 * 1024 * 1024 + 3)
    src = write(tmp_path / "f.bin", data)
    result = await import_file(repo, src, layout, name="named")
    assert result.root == build_dag(chunk_bytes(data, layout.chunk_size), layout)[0]
    pin = repo.get_pin(result.root)
    assert pin is not None
    assert (pin.name, pin.size, pin.hash, pin.profile) == ("named", len(data), hash_name, profile)
    custom = make_layout(profile, hash_name, chunk_size=4096)
    small = await import_file(repo, write(tmp_path / "s", data[:10_000]), custom)
    small_pin = repo.get_pin(small.root)
    assert small_pin is not None and small_pin.profile == f"{profile}/chunk-4096"
    await export_file(repo, result.root, tmp_path / "o.bin")
    assert (tmp_path / "o.bin").read_bytes() == data


async def test_default_layout_multi_mib_with_progress(repo: Repo, tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)
    src = write(tmp_path / "big.bin", data)
    seen: list[tuple[int, int]] = []
    result = await import_file(repo, src, make_layout(), lambda d, t: seen.append((d, t)))
    assert result.block_count == 11  # 10 leaves + root
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    out = tmp_path / "out.bin"
    got: list[tuple[int, int]] = []
    await export_file(repo, result.root, out, lambda d, t: got.append((d, t)), fsync=False)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert got[-1] == (len(data), len(data))


async def test_reimport_is_idempotent(repo: Repo, tmp_path: Path) -> None:
    src = write(tmp_path / "a", os.urandom(10_000))
    first = await import_file(repo, src, SMALL)
    second = await import_file(repo, src, SMALL)
    assert first == second
    assert len(repo.pins()) == 1


async def test_import_errors(repo: Repo, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file"):
        await import_file(repo, tmp_path / "missing", SMALL)
    with pytest.raises(FileshareError, match="directory"):
        await import_file(repo, tmp_path, SMALL)
    assert repo.pins() == []


async def test_import_disk_full(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block files (ENOSPC from write) and small-block rows (SQLITE_FULL) both say NoSpace."""
    big = write(tmp_path / "a", os.urandom(3 * MIB))

    def full(fd: int, buf: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("fileshare.content.blockstore.os.write", full)
        with pytest.raises(NoSpace, match="no space left on device"):
            await import_file(repo, big, make_layout())
    assert repo.pins() == []

    small = write(tmp_path / "b", os.urandom(400_000))
    db = sqlite3.connect(repo.blocks.small.path)
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    opener = SmallBlocks._open

    def capped(self: SmallBlocks) -> sqlite3.Connection:
        conn = opener(self)
        conn.execute(f"PRAGMA max_page_count={pages + 20}")  # a real SQLITE_FULL, ~80 KB on
        return conn

    monkeypatch.setattr(SmallBlocks, "_open", capped)
    repo.blocks.small.close()
    repo.blocks.small = SmallBlocks(repo.blocks.small.path)  # connections opened capped
    with pytest.raises(NoSpace, match="no space left on device"):
        await import_file(repo, small, SMALL)
    assert repo.pins() == []


async def test_import_detects_changed_file(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write(tmp_path / "a", os.urandom(5000))
    monkeypatch.setattr(ingest, "_fd_size", lambda fd: 1)
    with pytest.raises(FileChanged):
        await import_file(repo, src, SMALL)
    assert repo.pins() == []


async def test_export_corrupt_block_leaves_no_file(repo: Repo, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    result = await import_file(repo, write(tmp_path / "a", data), SMALL)
    leaf = build_dag(chunk_bytes(data, SMALL.chunk_size), SMALL)[1][3]
    assert leaf.cid.codec == RAW
    corrupt_block(repo.blocks, leaf.cid)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(VerificationError, match=str(leaf.cid)):
        await export_file(repo, result.root, out_dir / "file")
    assert list(out_dir.iterdir()) == []


async def test_export_missing_block_and_bad_destinations(repo: Repo, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    result = await import_file(repo, write(tmp_path / "a", data), SMALL)
    out = tmp_path / "out.bin"
    with pytest.raises(FileshareError, match="directory"):
        await export_file(repo, result.root, tmp_path)
    with pytest.raises(NotFound, match="does not exist"):
        await export_file(repo, result.root, tmp_path / "no" / "such" / "dir")
    leaf = build_dag(chunk_bytes(data, SMALL.chunk_size), SMALL)[1][0]
    repo.blocks.delete_sync(leaf.cid)
    out.write_bytes(b"previous content")
    with pytest.raises(NotFound, match=str(leaf.cid)):
        await export_file(repo, result.root, out)
    assert out.read_bytes() == b"previous content"  # untouched on failure
    assert leftovers(tmp_path) == []


async def test_export_disk_full(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await import_file(repo, write(tmp_path / "a", os.urandom(3000)), SMALL)

    def full(fd: int, buffers: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fileshare.content.ingest.os.writev", full)
    with pytest.raises(NoSpace):
        await export_file(repo, result.root, tmp_path / "o")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


async def test_export_from_a_pluggable_source_prefetches(repo: Repo, tmp_path: Path) -> None:
    data = os.urandom(64 * 1024)
    root, blocks = build_dag(chunk_bytes(data, SMALL.chunk_size), SMALL)
    by_cid = {b.cid: b.data for b in blocks}
    active = peak = calls = 0

    async def network(cid: CID) -> bytes:
        nonlocal active, peak, calls
        calls += 1
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.001)
        active -= 1
        return by_cid[cid]

    out = tmp_path / "net.bin"
    result = await export_file(repo, root, out, source=network)
    assert out.read_bytes() == data and result.size == len(data)
    assert calls == len(blocks)
    assert 1 < peak <= ingest.PREFETCH


# --- gc and verify ---
async def test_gc_keeps_pinned_dags_and_removes_the_rest(repo: Repo, tmp_path: Path) -> None:
    shared_prefix = os.urandom(4096)
    keep = await import_file(repo, write(tmp_path / "k", shared_prefix + os.urandom(9000)), SMALL)
    drop = await import_file(repo, write(tmp_path / "d", shared_prefix + os.urandom(9000)), SMALL)
    stale = Path(f"{repo.blocks.path_for(keep.root)}.1-1.tmp")  # a killed writer's temp file
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"junk")
    assert repo.unpin(drop.root)
    before = repo.blocks.stats_sync().blocks
    result = repo.gc()
    assert result.temp_files == 1 and not stale.exists()
    assert result.kept_blocks == keep.block_count
    assert result.removed_blocks == before - keep.block_count > 0
    assert not repo.blocks.has_sync(drop.root)
    await export_file(repo, keep.root, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == (tmp_path / "k").read_bytes()
    assert repo.verify().ok


async def test_gc_refuses_when_a_pinned_inner_node_is_corrupt(repo: Repo, tmp_path: Path) -> None:
    result = await import_file(repo, write(tmp_path / "k", os.urandom(9000)), SMALL)
    assert result.root.codec == DAG_PB
    corrupt_block(repo.blocks, result.root)
    count = repo.blocks.stats_sync().blocks
    with pytest.raises(VerificationError, match="gc refused"):
        repo.gc()
    assert repo.blocks.stats_sync().blocks == count


async def test_verify_reports_corrupt_and_missing(repo: Repo, tmp_path: Path) -> None:
    data = os.urandom(9000)
    result = await import_file(repo, write(tmp_path / "k", data), SMALL)
    _, blocks = build_dag(chunk_bytes(data, SMALL.chunk_size), SMALL)
    bad, gone = blocks[0].cid, blocks[1].cid
    corrupt_block(repo.blocks, bad)
    repo.blocks.delete_sync(gone)
    report = repo.verify()
    assert not report.ok
    assert [c.multihash for c in report.corrupt] == [bad.multihash]
    assert report.missing == [gone]
    assert report.checked == result.block_count - 1
    fixed = repo.verify(remove_corrupt=True)
    assert fixed.removed == 1 and not repo.blocks.has_sync(bad)
    # adding the file again repairs the store
    await import_file(repo, tmp_path / "k", SMALL)
    assert repo.verify().ok


async def test_sha256_cidv0_dag_walks(repo: Repo, tmp_path: Path) -> None:
    layout = make_layout("unixfs-v0-2015", "sha2-256", chunk_size=1024)
    result = await import_file(repo, write(tmp_path / "v0", os.urandom(5000)), layout)
    assert result.root.version == 0 and result.root.hash_code == SHA2_256
    status = repo.dag_status([result.root])
    assert status.complete and len(status.reachable) == result.block_count


async def test_export_to_a_device_writes_in_place(repo: Repo, tmp_path: Path) -> None:
    result = await import_file(repo, write(tmp_path / "a", os.urandom(5000)), SMALL)
    exported = await export_file(repo, result.root, "/dev/null")
    assert exported.size == 5000 and Path("/dev/null").is_char_device()
