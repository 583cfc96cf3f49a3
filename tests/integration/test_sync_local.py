"""Folder sync between two or three folders and repositories on this machine (no network).

``ensure_blocks`` is a callback that copies a DAG's missing blocks from the other repositories and
records every block it had to copy, standing in for bitswap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from fileshare.content.cid import CID, RAW
from fileshare.content.ingest import export_file, import_file
from fileshare.content.layout import make_layout
from fileshare.content.reader import child_cids
from fileshare.errors import DecodeError, LimitExceeded, NotFound
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.repo import Repo
from fileshare.sync import (
    EnsureBlocks,
    FolderConfig,
    InsufficientSpace,
    ReceiveReport,
    Snapshot,
    SnapshotRejected,
    SyncFolder,
    apply,
    run_folder,
    scanner,
    sign_snapshot,
    watch_folder,
)
from fileshare.sync.ignore import IgnoreRules
from fileshare.sync.snapshot import Entry, build_tree, file_tsize
from fileshare.sync.version import Version

LAYOUT = make_layout(chunk_size=1024)  # small chunks: multi-block files from a few KiB


@dataclass
class Net:
    """All repositories; ``copied`` lists the blocks each node had to receive."""

    repos: dict[str, Repo] = field(default_factory=dict)
    copied: dict[str, list[CID]] = field(default_factory=dict)
    asked: dict[str, list[CID]] = field(default_factory=dict)

    def ensure_blocks_for(self, name: str) -> EnsureBlocks:
        dst = self.repos[name]

        async def ensure(root: CID) -> None:
            self.asked.setdefault(name, []).append(root)
            stack = [root]
            while stack:
                cid = stack.pop()
                if dst.blocks.has_sync(cid):
                    data = dst.blocks.get_sync(cid)
                else:
                    data = self._find(cid, name)
                    dst.blocks.put_sync(cid, data)
                    self.copied.setdefault(name, []).append(cid)
                stack.extend(child_cids(cid, data))
            await trio.lowlevel.checkpoint()

        return ensure

    def _find(self, cid: CID, exclude: str) -> bytes:
        for n, r in self.repos.items():
            if n != exclude and r.blocks.has_sync(cid):
                return r.blocks.get_sync(cid)
        raise NotFound(f"no node has {cid}")


@dataclass
class Node:
    name: str
    dir: Path
    key: PrivateKey
    folder: SyncFolder

    @property
    def peer(self) -> PeerId:
        return self.folder.me


KEYS = {n: PrivateKey.from_seed(bytes([i + 1]) * 32) for i, n in enumerate("abc")}
PEERS = {n: PeerId.from_public_key(k.public_key()) for n, k in KEYS.items()}


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    yield n
    for r in n.repos.values():
        r.close()


def make_nodes(tmp: Path, net: Net, names: str = "ab", writers: str = "abc") -> list[Node]:
    config = FolderConfig(b"S" * 16, frozenset(PEERS[w] for w in writers))
    nodes = []
    for name in names:
        d = tmp / f"dir_{name}"
        d.mkdir()
        repo = Repo.open(tmp / f"repo_{name}")
        net.repos[name] = repo
        folder = SyncFolder(d, repo, KEYS[name], config, layout=LAYOUT, settle=0.0)
        nodes.append(Node(name, d, KEYS[name], folder))
    return nodes


async def send(src: Node, dst: Node, net: Net) -> ReceiveReport:
    await src.folder.scan()
    data, _ = await src.folder.publish()
    return await dst.folder.receive(data, net.ensure_blocks_for(dst.name))


def tree(d: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and not rel.startswith(".fileshare/"):
            out[rel] = p.read_bytes()
    return out


def write(path: Path, data: bytes, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


async def test_create_modify_delete_three_nodes(tmp_path: Path, net: Net) -> None:
    a, b, c = make_nodes(tmp_path, net, "abc")
    write(a.dir / "top.txt", b"hello")
    write(a.dir / "sub/deep/data.bin", os.urandom(5000), mtime=1_600_000_000_123_456_789)
    os.chmod(a.dir / "top.txt", 0o600)
    await send(a, b, net)
    assert tree(b.dir) == tree(a.dir)
    assert (b.dir / "sub/deep/data.bin").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert (b.dir / "top.txt").stat().st_mode & 0o777 == 0o600
    await send(b, c, net)  # relayed by another writer
    assert tree(c.dir) == tree(a.dir)

    write(a.dir / "top.txt", b"hello again")
    (a.dir / "sub/deep/data.bin").unlink()
    report = await send(a, b, net)
    assert report.applied.trashed == ["sub/deep/data.bin"]
    assert tree(b.dir) == {"top.txt": b"hello again"}
    assert not (b.dir / "sub").exists()  # emptied directories go too
    trash = list((b.dir / ".fileshare/trash").iterdir())
    assert len(trash) == 1 and trash[0].name.endswith("sub%deep%data.bin")
    await send(b, c, net)
    assert tree(c.dir) == tree(a.dir)
    # nothing further to do, in either direction
    assert (await send(c, a, net)).plan.empty
    assert not (await a.folder.scan()).changed


async def test_rename_moves_without_transfer(tmp_path: Path, net: Net) -> None:
    a, b = make_nodes(tmp_path, net)
    payload = os.urandom(20_000)
    write(a.dir / "old/name.bin", payload)
    await send(a, b, net)
    copied_before = len(net.copied["b"])
    asked_before = len(net.asked["b"])
    (a.dir / "new").mkdir()
    os.rename(a.dir / "old/name.bin", a.dir / "new/renamed.bin")
    report = await send(a, b, net)
    assert report.applied.renamed == [("old/name.bin", "new/renamed.bin")]
    assert len(net.copied["b"]) == copied_before  # no block transferred
    assert len(net.asked["b"]) == asked_before  # ensure_blocks not even called
    assert tree(b.dir) == {"new/renamed.bin": payload}
    # a copy (the old name kept) is assembled from local blocks, also without transfer
    write(a.dir / "copy.bin", payload)
    await send(a, b, net)
    assert len(net.copied["b"]) == copied_before
    assert tree(b.dir) == tree(a.dir)


async def test_concurrent_edit_makes_a_deterministic_conflict_copy(
    tmp_path: Path, net: Net
) -> None:
    a, b = make_nodes(tmp_path, net)
    write(a.dir / "doc.txt", b"base")
    await send(a, b, net)
    t = 1_700_000_000 * 10**9
    write(a.dir / "doc.txt", b"edited on a", mtime=t + 5 * 10**9)  # later: wins
    write(b.dir / "doc.txt", b"edited on b", mtime=t + 2 * 10**9)
    await a.folder.scan()
    await b.folder.scan()
    data_a, _ = await a.folder.publish()  # both publish before either hears of the other
    data_b, _ = await b.folder.publish()
    ra = await a.folder.receive(data_b, net.ensure_blocks_for("a"))
    rb = await b.folder.receive(data_a, net.ensure_blocks_for("b"))
    name = f"doc.sync-conflict-20231114-221322-{str(b.peer)[-7:]}.txt"
    assert ra.plan.conflicts[0].conflict_path == rb.plan.conflicts[0].conflict_path == name
    expected = {"doc.txt": b"edited on a", name: b"edited on b"}
    assert tree(a.dir) == expected and tree(b.dir) == expected
    # both nodes now publish the conflict copy; the versions merge without a new conflict
    r1 = await send(a, b, net)
    r2 = await send(b, a, net)
    assert not r1.plan.conflicts and not r2.plan.conflicts
    assert tree(a.dir) == expected and tree(b.dir) == expected
    assert a.folder.index.by_path().keys() == b.folder.index.by_path().keys()


async def test_ignored_file_not_synced(tmp_path: Path, net: Net) -> None:
    a, b = make_nodes(tmp_path, net)
    write(a.dir / ".fileshareignore", b"*.log\nbuild/\n")
    write(a.dir / "app.log", b"noise")
    write(a.dir / "build/out.o", b"obj")
    write(a.dir / "src.c", b"int main;")
    write(b.dir / ".fileshareignore", b"secret.txt\n")
    write(a.dir / "secret.txt", b"not for b")
    await send(a, b, net)
    assert tree(b.dir) == {".fileshareignore": b"secret.txt\n", "src.c": b"int main;"}
    snap = a.folder.snapshot()
    assert sorted(e.path for e in snap.entries) == ["secret.txt", "src.c"]


async def test_unauthorised_writer_ignored(tmp_path: Path, net: Net) -> None:
    a, c = make_nodes(tmp_path, net, "ac", writers="a")
    write(c.dir / "evil.txt", b"from c")
    await c.folder.scan()
    data, _ = await c.folder.publish()
    with pytest.raises(SnapshotRejected):
        await a.folder.receive(data, net.ensure_blocks_for("a"))
    assert tree(a.dir) == {}
    assert "a" not in net.asked


def crafted(entries: list[Entry], key: PrivateKey = KEYS["a"]) -> bytes:
    peer = PeerId.from_public_key(key.public_key())
    try:
        root, _ = build_tree(entries)
    except ValueError:  # names no directory can hold: any root will do, decoding refuses first
        root = CID.from_data(0x70, b"x")
    version = Version.of({peer: 10})
    return sign_snapshot(Snapshot(b"S" * 16, peer, version, tuple(entries), root, 0), key)


def evil_entry(path: str, size: int = 5, cid: CID | None = None) -> Entry:
    cid = cid or CID.from_data(RAW, b"evil!")
    return Entry(path, cid, size, 0, 0o644, size, PEERS["a"], Version.of({PEERS["a"]: 10}))


async def test_malicious_paths_rejected_nothing_outside(tmp_path: Path, net: Net) -> None:
    (b,) = make_nodes(tmp_path, net, "b")
    before = sorted(p.name for p in tmp_path.iterdir())
    for bad in ("../escaped.txt", "/tmp/abs.txt", ".fileshare/tmp/x", "C:/win.txt", "a\\..\\b"):
        with pytest.raises(DecodeError):
            await b.folder.receive(crafted([evil_entry(bad)]), net.ensure_blocks_for("b"))
    # a local symlink pointing outside: a snapshot path through it is refused at write time
    outside = tmp_path / "outside"
    outside.mkdir()
    (b.dir / "link").symlink_to(outside)
    net.repos["b"].blocks.put_sync(CID.from_data(RAW, b"evil!"), b"evil!")
    report = await b.folder.receive(crafted([evil_entry("link/x.txt")]), net.ensure_blocks_for("b"))
    assert "link/x.txt" in report.applied.skipped
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "outside"])


async def test_huge_claim_refused_without_writing(tmp_path: Path, net: Net) -> None:
    (b,) = make_nodes(tmp_path, net, "b")
    ten_tb = 10 * 10**12
    fake = CID.from_data(RAW, b"not really ten terabytes")
    with pytest.raises(InsufficientSpace):
        await b.folder.receive(
            crafted([evil_entry("huge.bin", ten_tb, fake)]), net.ensure_blocks_for("b")
        )
    assert "b" not in net.asked  # nothing was fetched
    assert tree(b.dir) == {}
    assert list((b.dir / ".fileshare/tmp").iterdir()) == []
    assert "huge.bin" not in b.folder.index.by_path()


async def test_local_change_not_overwritten(tmp_path: Path, net: Net) -> None:
    a, b = make_nodes(tmp_path, net)
    write(a.dir / "f", b"v1")
    await send(a, b, net)
    write(a.dir / "f", b"v2 from a")
    await a.folder.scan()
    data, _ = await a.folder.publish()
    # b edits f after its last scan; receive() rescans first, so this is a conflict, not a loss
    write(b.dir / "f", b"v2 from b", mtime=time.time_ns() + 10**9)
    await b.folder.receive(data, net.ensure_blocks_for("b"))
    contents = set(tree(b.dir).values())
    assert contents == {b"v2 from a", b"v2 from b"}


async def test_scan_cache_and_settle(tmp_path: Path, net: Net) -> None:
    (a,) = make_nodes(tmp_path, net, "a")
    write(a.dir / "x", b"1" * 3000)
    r1 = (await a.folder.scan()).result
    assert r1.imported == ["x"]
    r2 = (await a.folder.scan()).result
    assert r2.imported == [] and "x" in r2.files
    a.folder.scanner.settle = 30.0
    write(a.dir / "fresh", b"being written")
    r3 = (await a.folder.scan()).result
    assert r3.unstable == {"fresh"} and r3.retry_after is not None
    assert "fresh" not in a.folder.index.by_path()
    old = time.time_ns() - 60 * 10**9
    os.utime(a.dir / "fresh", ns=(old, old))  # settled long ago
    r4 = (await a.folder.scan()).result
    assert r4.imported == ["fresh"]


async def test_watcher_notices_a_change(tmp_path: Path) -> None:
    calls: list[frozenset[str] | None] = []
    seen = trio.Event()

    async def on_change(paths: frozenset[str] | None) -> float | None:
        calls.append(paths)
        if paths and "new.txt" in paths:
            seen.set()
        return None

    (tmp_path / ".fileshare").mkdir()
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(lambda: watch_folder(tmp_path, on_change, ready=ready))
        await ready.wait()
        assert calls == [None]  # the initial scan
        await trio.sleep(0.2)
        (tmp_path / ".fileshare" / "ignored").write_bytes(b"x")
        (tmp_path / "new.txt").write_bytes(b"x")
        with trio.fail_after(5):
            await seen.wait()
        nursery.cancel_scope.cancel()
    assert all(p is None or not any(x.startswith(".fileshare") for x in p) for p in calls)


async def test_run_folder_publishes_after_a_change(tmp_path: Path, net: Net) -> None:
    a, b = make_nodes(tmp_path, net)
    got: list[Snapshot] = []
    published = trio.Event()

    async def on_snapshot(data: bytes, snap: Snapshot) -> None:
        got.append(snap)
        await b.folder.receive(data, net.ensure_blocks_for("b"))
        if any(e.path == "later.txt" for e in snap.entries):
            published.set()

    write(a.dir / "early.txt", b"there before the start")
    async with trio.open_nursery() as nursery:
        ready = trio.Event()
        nursery.start_soon(lambda: run_folder(a.folder, on_snapshot, ready=ready))
        await ready.wait()
        assert [e.path for e in got[0].entries] == ["early.txt"]  # from the initial scan
        write(a.dir / "later.txt", b"written while watching")
        with trio.fail_after(5):
            await published.wait()
        nursery.cancel_scope.cancel()
    assert tree(b.dir) == tree(a.dir)


async def test_batched_import_matches_import_file(tmp_path: Path, net: Net) -> None:
    (a,) = make_nodes(tmp_path, net, "a")
    sizes = {"empty": 0, "one": 1, "chunk": 1024, "three_chunks": 3000, "big": 1024 * 1024 + 7}
    for name, size in sizes.items():
        write(a.dir / name, os.urandom(size))
    result = (await a.folder.scan()).result
    assert sorted(result.imported) == sorted(sizes)
    other = Repo.open(tmp_path / "repo_other")
    try:
        for name, size in sizes.items():
            ref = await import_file(other, a.dir / name, LAYOUT)
            got = result.files[name]
            assert (got.cid, got.size) == (ref.root, size)
            assert got.tsize == file_tsize(other.blocks, ref.root)
            assert net.repos["a"].dag_status([got.cid]).complete
            pin = net.repos["a"].get_pin(got.cid)
            assert pin is not None and pin.name == name and pin.blocks == ref.block_count
    finally:
        other.close()


async def test_batched_import_skips_files_changed_after_the_walk(
    tmp_path: Path, net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = make_nodes(tmp_path, net, "a")
    for name in ("grows", "gone", "swapped", "steady"):
        write(a.dir / name, b"x" * 100, mtime=time.time_ns() - 10**10)
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 100)
    real_walk = scanner.walk

    def walk_then_change(
        root: Path, ignore: IgnoreRules
    ) -> tuple[dict[str, os.stat_result], dict[str, str]]:
        found = real_walk(root, ignore)
        with (a.dir / "grows").open("ab") as f:
            f.write(b"more")
        (a.dir / "gone").unlink()
        (a.dir / "swapped").unlink()
        (a.dir / "swapped").symlink_to(secret)
        return found

    monkeypatch.setattr(scanner, "walk", walk_then_change)
    result = (await a.folder.scan()).result
    assert result.imported == ["steady"]
    assert result.unstable == {"grows", "swapped"}
    assert "gone" not in result.files and "gone" not in result.skipped
    assert set(a.folder.index.by_path()) == {"steady"}


async def test_many_small_files_applied_in_batches_as_blocks_arrive(
    tmp_path: Path, net: Net
) -> None:
    a, b = make_nodes(tmp_path, net)
    t = 1_650_000_000 * 10**9
    for i in range(apply.APPLY_BATCH * 2 + 10):
        write(a.dir / f"d{i % 7}/f{i:04}", b"%04d" % i + os.urandom(i % 50), mtime=t + i)
    os.chmod(a.dir / "d0/f0000", 0o600)
    await a.folder.scan()
    data, _ = await a.folder.publish()
    copy = net.ensure_blocks_for("b")
    waits: list[int] = []

    async def blocks_ready(roots: Sequence[CID]) -> None:  # a background fetch getting there
        waits.append(len(roots))
        for root in roots:
            await copy(root)

    report = await b.folder.receive(data, net.ensure_blocks_for("b"), blocks_ready)
    assert tree(b.dir) == tree(a.dir)
    assert len(waits) >= 3 and sum(waits) == len(report.applied.written)
    assert report.applied.requested == []  # nothing left for ensure_blocks
    assert (b.dir / "d0/f0000").stat().st_mode & 0o777 == 0o600
    assert (b.dir / "d3/f0010").stat().st_mtime_ns == t + 10
    assert not (await b.folder.scan()).changed  # the scan cache knows every written file
    assert list((b.dir / ".fileshare/tmp").iterdir()) == []


async def test_corrupt_block_skips_only_its_file(tmp_path: Path, net: Net) -> None:
    a, b = make_nodes(tmp_path, net)
    for name in ("good1", "bad", "good2"):
        write(a.dir / name, os.urandom(700))
    await a.folder.scan()
    data, _ = await a.folder.publish()
    bad = a.folder.index.by_path()["bad"].cid
    assert bad is not None
    net.repos["b"].blocks.put_sync(bad, b"\x00" * 700, verified=True)  # stored corrupt
    report = await b.folder.receive(data, net.ensure_blocks_for("b"))
    assert "bad" in report.applied.skipped and "corrupt" in report.applied.skipped["bad"]
    assert sorted(tree(b.dir)) == ["good1", "good2"]
    assert "bad" not in b.folder.index.by_path()


async def test_failed_bulk_fetch_skips_only_what_it_did_not_bring(
    tmp_path: Path, net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply, "APPLY_BATCH", 2)
    monkeypatch.setattr(apply, "APPLY_PARALLEL", 1)
    a, b = make_nodes(tmp_path, net)
    for i in range(5):
        write(a.dir / f"f{i}", os.urandom(100))
    await a.folder.scan()
    data, _ = await a.folder.publish()
    copy = net.ensure_blocks_for("b")
    calls = 0

    async def blocks_ready(roots: Sequence[CID]) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise LimitExceeded("the DAG is larger than claimed")
        for root in roots:
            await copy(root)

    report = await b.folder.receive(data, net.ensure_blocks_for("b"), blocks_ready)
    assert calls == 2  # not asked again after it failed
    assert sorted(tree(b.dir)) == ["f0", "f1"]
    assert sorted(report.applied.skipped) == ["f2", "f3", "f4"]
    assert all("larger than claimed" in why for why in report.applied.skipped.values())
    assert report.applied.requested == []  # no file-by-file fetch after the bulk one failed
    assert sorted(b.folder.index.by_path()) == ["f0", "f1"]


async def test_large_missing_file_goes_through_fetch_file(tmp_path: Path, net: Net) -> None:
    a, b = make_nodes(tmp_path, net)
    payload = os.urandom(apply.SMALL_FILE_BYTES + 1)
    write(a.dir / "big.bin", payload)
    write(a.dir / "small.txt", b"small")
    await a.folder.scan()
    data, _ = await a.folder.publish()
    src, dst = net.repos["a"], net.repos["b"]
    streamed: list[Path] = []

    async def fetch_file(root: CID, out: Path) -> None:  # stands in for a streaming fetch
        stack = [root]
        while stack:
            cid = stack.pop()
            block = src.blocks.get_sync(cid)
            dst.blocks.put_sync(cid, block)
            stack.extend(child_cids(cid, block))
        await export_file(dst, root, out)
        streamed.append(out)

    report = await b.folder.receive(data, net.ensure_blocks_for("b"), fetch_file=fetch_file)
    assert tree(b.dir) == tree(a.dir)
    assert len(streamed) == 1 and streamed[0].parent == b.dir / ".fileshare/tmp"
    assert net.asked["b"] == [a.folder.index.by_path()["small.txt"].cid]  # the small one only
    assert len(report.applied.requested) == 2
