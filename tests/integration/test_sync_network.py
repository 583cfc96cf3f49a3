"""`fileshare sync` as real processes on 127.0.0.1: three nodes keeping a folder the same.

One cluster (A creates the folder allowing B, C and a hostile writer H; B and C join by invite)
serves the whole module; each test uses its own file names. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.content.blockstore import Blockstore
from fileshare.content.cid import CID, RAW
from fileshare.content.hamt import hamt_entries
from fileshare.content.layout import make_layout
from fileshare.content.reader import decode_block
from fileshare.content.unixfs import decode_directory
from fileshare.errors import DecodeError
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.net.addrs import parse
from fileshare.node import load_identity, open_node
from fileshare.sync import FolderConfig, Snapshot, sign_snapshot
from fileshare.sync.folder import parse_folder_id
from fileshare.sync.network import (
    Pointer,
    decode_pointer,
    encode_pointer,
    folder_topic,
    publish_snapshot,
)
from fileshare.sync.snapshot import Entry, build_tree
from fileshare.sync.version import Version

from ..procutil import ENV, FILESHARE, ROOT, stop_process, wait_until

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
DEADLINE = 30.0

pytestmark = pytest.mark.slow


def peer_id(repo: Path) -> str:
    out = subprocess.run(
        [*FILESHARE, "--repo", str(repo), "--json", "id"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=ENV, check=True,
    )  # fmt: skip
    return str(json.loads(out.stdout)["peer_id"])


class SyncNode:
    """One `fileshare --json sync DIR ...` process; its JSON events are collected by a thread."""

    def __init__(self, name: str, repo: Path, folder: Path, *args: str) -> None:
        self.name, self.repo, self.dir, self.args = name, repo, folder, args
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.start()

    def start(self, *extra: str) -> None:
        self.events.clear()
        self.proc = subprocess.Popen(
            [*FILESHARE, "--repo", str(self.repo), "--json", "sync", str(self.dir),
             "--listen", LOOPBACK, "--no-mdns", *self.args, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()
        self.wait_event(lambda e: e["event"] == "ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.stderr.append(f"stdout: {line}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    @property
    def invite(self) -> str:
        return str(next(e["invite"] for e in self.events if e["event"] == "invite"))

    @property
    def info(self) -> dict[str, Any]:
        return next(e for e in self.events if e["event"] == "invite")

    def wait_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = DEADLINE
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if pred(e):
                    return e
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name}: no such event within {timeout} s; events {self.events[-10:]}; "
            f"stderr {''.join(self.stderr[-30:])}"
        )

    def stop(self) -> None:
        stop_process(self.proc, what=self.name)


def tree(d: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file outside ``.fileshare/``. Files and directories the
    sync deletes while this runs are left out (``os.walk`` skips a vanished directory)."""
    out = {}
    for parent, dirs, names in os.walk(d):
        base = Path(parent)
        rel_dir = base.relative_to(d).as_posix()
        if rel_dir == ".fileshare" or rel_dir.startswith(".fileshare/"):
            dirs.clear()
            continue
        for name in names:
            rel = (base / name).relative_to(d).as_posix()
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                out[rel] = (base / name).read_bytes()
    return dict(sorted(out.items()))


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.part"  # ignored? no: written whole, then renamed
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        repos = {n: base / f"repo_{n}" for n in "abch"}
        self.ids = {n: peer_id(r) for n, r in repos.items()}
        allow = [x for n in "bch" for x in ("--allow", self.ids[n])]
        self.a = SyncNode("a", repos["a"], base / "A", *allow)
        invite = self.a.invite
        self.b = SyncNode("b", repos["b"], base / "B", "--join", invite)
        self.c = SyncNode("c", repos["c"], base / "C", "--join", invite)
        self.h_repo = repos["h"]
        self.nodes = [self.a, self.b, self.c]

    def same(self, *paths: str) -> bool:
        ref = tree(self.a.dir)
        return all(tree(n.dir) == ref for n in self.nodes) and all(p in ref for p in paths)

    def wait_same(self, *paths: str, what: str = "all three folders to match") -> None:
        try:
            wait_until(lambda: self.same(*paths), what)
        except AssertionError:
            raise AssertionError(
                f"{what}: " + "; ".join(f"{n.name}={sorted(tree(n.dir))}" for n in self.nodes)
            ) from None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("sync"))
    yield c
    for n in c.nodes:
        n.stop()


def received_after(node: SyncNode, start: int) -> list[dict[str, Any]]:
    return [e for e in node.events[start:] if e["event"] == "received"]


def test_create_modify_delete(cluster: Cluster) -> None:
    a = cluster.a
    write(a.dir / "docs/readme.txt", b"hello")
    write(a.dir / "data.bin", os.urandom(300_000))
    cluster.wait_same("docs/readme.txt", "data.bin", what="create")
    write(cluster.b.dir / "docs/readme.txt", b"hello from b")  # B is a writer too
    cluster.wait_same(what="modify")
    assert tree(cluster.c.dir)["docs/readme.txt"] == b"hello from b"
    (cluster.c.dir / "data.bin").unlink()
    wait_until(lambda: all(not (n.dir / "data.bin").exists() for n in cluster.nodes), "delete")
    cluster.wait_same(what="delete")
    assert any((a.dir / ".fileshare/trash").glob("*-data.bin"))  # moved to the trash


def test_rename_transfers_no_blocks(cluster: Cluster) -> None:
    a = cluster.a
    payload = os.urandom(2_000_000)
    write(a.dir / "big.bin", payload)
    cluster.wait_same("big.bin", what="big file")
    for n in (cluster.b, cluster.c):  # the files land just before their `received` event
        n.wait_event(lambda e: e["event"] == "received" and "big.bin" in e.get("written", []))
    marks = {n.name: len(n.events) for n in cluster.nodes}
    (a.dir / "moved").mkdir()
    os.rename(a.dir / "big.bin", a.dir / "moved/big-renamed.bin")
    cluster.wait_same("moved/big-renamed.bin", what="rename")
    assert "big.bin" not in tree(cluster.b.dir)
    for n in (cluster.b, cluster.c):
        got = received_after(n, marks[n.name])
        assert any(["big.bin", "moved/big-renamed.bin"] in e["renamed"] for e in got), got
        assert sum(e["file_bytes_fetched"] for e in got) == 0, got


def test_directory_of_thousands_of_files_is_sharded(cluster: Cluster) -> None:
    """5,000 files in one directory (a plain UnixFS node would pass 256 KiB): the snapshot tree
    holds it as a HAMT directory and all three folders match."""
    a = cluster.a
    start = len(a.events)
    staging = cluster.base / "staging-many"
    staging.mkdir()
    for i in range(5000):
        (staging / f"entry-{i:05d}.txt").write_bytes(f"{i}\n".encode())
    os.rename(staging, a.dir / "many")  # appears at once, complete
    cluster.wait_same("many/entry-04999.txt", what="a directory of 5,000 files")
    published = [e for e in a.events[start:] if e["event"] == "published"]
    root = CID.parse(published[-1]["root"])
    store = Blockstore(a.repo / "blocks")
    try:
        links = decode_directory(store.get_sync(root))[1]
        many = next(lk.hash for lk in links if lk.name == "many")
        shard = store.get_sync(many)
        assert decode_block(many, shard).kind == "hamt"
        names = {lk.name for lk in hamt_entries(shard, store.get_sync)}
        assert len(names) == 5000 and "entry-01234.txt" in names
    finally:
        store.close()
    shutil.rmtree(a.dir / "many")
    cluster.wait_same(what="the directory deleted")


def test_any_node_fetches_the_snapshot_tree_by_cid(cluster: Cluster, tmp_path: Path) -> None:
    """The published root is a UnixFS directory: `fileshare fetch ROOT` on a node that is not a
    member writes the folder's tree (without .fileshare/), every block verified."""
    a = cluster.a
    start = len(a.events)
    write(a.dir / "shared/by-cid.txt", b"fetched as part of a tree")
    cluster.wait_same("shared/by-cid.txt", what="a file for the tree")
    root = a.wait_event(lambda e: e["event"] == "published" and a.events.index(e) >= start)["root"]
    addr = next(x for x in a.info["addrs"] if "/ip4/127.0.0.1/" in x)
    out = tmp_path / "tree"
    subprocess.run(
        [*FILESHARE, "--repo", str(tmp_path / "outsider"), "fetch", root, "-o", str(out),
         "--peer", addr],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=ENV, check=True,
    )  # fmt: skip
    assert tree(out) == tree(a.dir) and "shared/by-cid.txt" in tree(out)
    assert not (out / ".fileshare").exists()


def test_concurrent_edit_makes_the_same_conflict_copy(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    write(a.dir / "notes.txt", b"base")
    cluster.wait_same("notes.txt", what="base version")
    b.stop()
    write(a.dir / "notes.txt", b"edited on a")
    wait_until(lambda: tree(cluster.c.dir).get("notes.txt") == b"edited on a", "a's edit at c")
    write(b.dir / "notes.txt", b"edited on b while offline")
    t = time.time_ns() + 5_000_000_000  # b's edit is the later one: it wins everywhere
    os.utime(b.dir / "notes.txt", ns=(t, t))
    b.start()
    cluster.wait_same(what="conflict resolved")
    files = tree(a.dir)
    copies = [p for p in files if p.startswith("notes.sync-conflict-") and p.endswith(".txt")]
    assert len(copies) == 1, sorted(files)
    assert files["notes.txt"] == b"edited on b while offline"
    assert files[copies[0]] == b"edited on a"
    assert copies[0].endswith(f"-{cluster.ids['a'][-7:]}.txt")


def test_ignored_files_are_neither_shared_nor_written(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    write(a.dir / ".fileshareignore", b"*.tmp\nbuild/\n")  # each node keeps its own
    write(c.dir / ".fileshareignore", b"*.log\n")
    time.sleep(0.5)
    write(a.dir / "scratch.tmp", b"a only")
    write(a.dir / "build/out.o", b"a only")
    write(a.dir / "run.log", b"not written at c")
    write(a.dir / "after-ignored.txt", b"marker")
    wait_until(lambda: all((n.dir / "after-ignored.txt").exists() for n in cluster.nodes), "marker")
    wait_until(lambda: (b.dir / "run.log").exists(), "run.log at b")
    time.sleep(1.0)
    for n in (b, c):
        assert not (n.dir / "scratch.tmp").exists() and not (n.dir / "build").exists()
        assert not (n.dir / ".fileshareignore").exists() or n is c
    assert not (c.dir / "run.log").exists()
    for rel in ("scratch.tmp", "build/out.o", "run.log"):  # leave the folders alike
        (a.dir / rel).unlink()
    (a.dir / "build").rmdir()
    wait_until(lambda: not (b.dir / "run.log").exists(), "run.log deleted at b")
    (a.dir / ".fileshareignore").unlink()
    (c.dir / ".fileshareignore").unlink()
    cluster.wait_same(what="folders alike again")


def test_offline_node_catches_up(cluster: Cluster) -> None:
    a, c = cluster.a, cluster.c
    write(a.dir / "keep.txt", b"v1")
    write(a.dir / "gone.txt", b"to delete")
    cluster.wait_same("keep.txt", "gone.txt", what="before c goes offline")
    c.stop()
    write(a.dir / "keep.txt", b"v2")
    (a.dir / "gone.txt").unlink()
    write(a.dir / "new/while-offline.txt", b"new")
    wait_until(lambda: tree(cluster.b.dir) == tree(a.dir), "b to follow a")
    c.start()  # no --join: the folder and a's address are remembered
    cluster.wait_same("new/while-offline.txt", what="c to catch up")
    assert tree(c.dir)["keep.txt"] == b"v2" and "gone.txt" not in tree(c.dir)


def test_unauthorised_writer_is_ignored(cluster: Cluster) -> None:
    a = cluster.a
    folder = a.info["folder"]
    intruder = SyncNode(
        "u", cluster.base / "repo_u", cluster.base / "U", "--folder", folder,
        "--peer", a.info["addrs"][0],
    )  # fmt: skip
    try:
        write(intruder.dir / "intruder.txt", b"should never arrive")
        intruder.wait_event(lambda e: e["event"] == "published" and e["files"] >= 1)
        a.wait_event(lambda e: e["event"] == "rejected" and "not an allowed writer" in e["reason"])
        write(a.dir / "after-intruder.txt", b"marker")
        cluster.wait_same("after-intruder.txt", what="marker after the intruder")
        for n in cluster.nodes:
            assert not (n.dir / "intruder.txt").exists()
    finally:
        intruder.stop()


async def test_malicious_path_is_rejected(cluster: Cluster) -> None:
    a = cluster.a
    config = FolderConfig(parse_folder_id(a.info["folder"]), frozenset())
    key = load_identity(cluster.h_repo)
    me = PeerId.from_public_key(key.public_key())
    content = b"escaped!"
    cid = CID.from_data(RAW, content, 0x1E)
    version = Version.of({me: 1000})
    good = Entry("fine.txt", cid, len(content), 0, 0o644, len(content), me, version)
    root, _ = build_tree([good])
    bad_paths = ["../escape.txt", "/tmp/abs-escape.txt", "sub/../../escape2.txt", "nul\x00.txt"]
    async with open_node(cluster.h_repo, listen=[parse(LOOPBACK)]) as node:
        await node.repo.blocks.put_many([(cid, content)], verified=True)
        await node.host.dial(parse(a.info["addrs"][0]))
        node.pubsub.subscribe(folder_topic(config.folder))
        assert await node.pubsub.wait_for_topic_peers(folder_topic(config.folder), 1, DEADLINE)
        for i, path in enumerate(bad_paths):  # one at a time: a node keeps one per author
            entry = Entry(path, cid, len(content), 0, 0o644, len(content), me, version)
            snap = Snapshot(config.folder, me, Version.of({me: 1000 + i}), (entry,), root, 1)
            data = sign_snapshot(snap, key)
            ptr, _ = await publish_snapshot(node, config, data, snap, make_layout())
            sent = str(ptr.snapshot)
            with trio.move_on_after(DEADLINE):
                while not any(
                    e["event"] == "rejected" and e.get("snapshot") == sent for e in a.events
                ):
                    await trio.sleep(0.1)
            assert any(e.get("snapshot") == sent for e in a.events), (path, a.events[-5:])
        node.nursery.cancel_scope.cancel()
    base = cluster.base
    assert not any(base.rglob("escape*.txt"))
    assert not Path("/tmp/abs-escape.txt").exists()
    assert all(content not in tree(n.dir).values() for n in cluster.nodes)


# --- the pointer codec (no processes) ---
_PEERS = [
    PeerId.from_public_key(PrivateKey.from_seed(bytes([i]) * 32).public_key()) for i in (1, 2)
]


@given(
    folder=st.binary(min_size=1, max_size=64),
    size=st.integers(1, 64 << 20),
    counters=st.lists(st.integers(1, 1 << 40), min_size=0, max_size=2),
    data=st.binary(max_size=64),
)
@settings(max_examples=50, deadline=None)
def test_pointer_round_trip(folder: bytes, size: int, counters: list[int], data: bytes) -> None:
    cid = CID.from_data(RAW, data, 0x1E)
    version = Version.of(list(zip(_PEERS, counters, strict=False)))
    addr = parse(f"/ip4/127.0.0.1/tcp/4001/p2p/{_PEERS[0]}")
    p = Pointer(folder, cid, size, cid, version, (addr,))
    assert decode_pointer(encode_pointer(p)) == p


@given(st.binary(max_size=512))
@settings(max_examples=300, deadline=None)
def test_pointer_decoder_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_pointer(data)
