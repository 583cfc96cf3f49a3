"""Pure merge logic: local scans, remote plans, conflicts decided identically on every node."""

from __future__ import annotations

import dataclasses

from fileshare.content.cid import CID, RAW
from fileshare.identity.keys import PrivateKey
from fileshare.identity.peerid import PeerId
from fileshare.sync.merge import (
    LocalFile,
    commit,
    conflict_name,
    plan_merge,
    record_scan,
    short_id,
)
from fileshare.sync.snapshot import Snapshot
from fileshare.sync.version import Version

A = PeerId.from_public_key(PrivateKey.from_seed(b"\x0a" * 32).public_key())
B = PeerId.from_public_key(PrivateKey.from_seed(b"\x0b" * 32).public_key())
C = PeerId.from_public_key(PrivateKey.from_seed(b"\x0c" * 32).public_key())
FOLDER = b"F" * 16
X = CID.from_data(RAW, b"x")
Y = CID.from_data(RAW, b"y")
Z = CID.from_data(RAW, b"z")
T0 = 1_700_000_000 * 10**9


def lf(path: str, cid: CID, mtime: int = T0) -> LocalFile:
    return LocalFile(path, cid, 1, mtime, 0o644, 1)


def empty(me: PeerId) -> Snapshot:
    return Snapshot(FOLDER, me, Version())


def scanned(me: PeerId, *files: LocalFile, index: Snapshot | None = None) -> Snapshot:
    return record_scan(index or empty(me), {f.path: f for f in files}, me, now_ns=T0)


def sync(dst: Snapshot, src: Snapshot, me: PeerId) -> Snapshot:
    """Merge ``src`` into ``dst`` assuming every action succeeds."""
    plan = plan_merge(dst, src, me)
    return commit(dst, plan, plan.keys)


def test_record_scan_versions() -> None:
    i1 = scanned(A, lf("a", X))
    e = i1.by_path()["a"]
    assert e.version.as_dict() == {A: 1} and i1.version.as_dict() == {A: 1}
    assert scanned(A, lf("a", X), index=i1) is i1  # nothing changed
    i2 = scanned(A, lf("a", Y), index=i1)
    assert i2.by_path()["a"].version.as_dict() == {A: 2}
    i3 = scanned(A, index=i2)
    assert i3.by_path()["a"].deleted and i3.by_path()["a"].version.as_dict() == {A: 3}
    kept = record_scan(i2, {}, A, keep=lambda p: p == "a")
    assert kept is i2


def test_new_modify_delete_flow() -> None:
    a = scanned(A, lf("f", X))
    plan = plan_merge(empty(B), a, B)
    assert [(f.path, f.expect) for f in plan.fetches] == [("f", None)]
    b = commit(empty(B), plan, plan.keys)
    assert b.by_path()["f"] == a.by_path()["f"]
    a2 = scanned(A, lf("f", Y), index=a)
    plan = plan_merge(b, a2, B)
    assert plan.fetches[0].expect == b.by_path()["f"] and plan.fetches[0].entry.cid == Y
    b = commit(b, plan, plan.keys)
    a3 = scanned(A, index=a2)
    plan = plan_merge(b, a3, B)
    assert [d.path for d in plan.deletes] == ["f"] and not plan.fetches
    b = commit(b, plan, plan.keys)
    assert b.by_path()["f"].deleted
    assert plan_merge(b, a3, B).empty  # nothing new the second time


def test_rename_uses_the_local_file() -> None:
    a = scanned(A, lf("old", X))
    b = sync(empty(B), a, B)
    a2 = scanned(A, lf("new", X), index=a)
    plan = plan_merge(b, a2, B)
    assert [d.path for d in plan.deletes] == ["old"]
    assert [(f.path, f.source) for f in plan.fetches] == [("new", "old")]


def test_conflict_is_identical_on_both_sides() -> None:
    base_a = scanned(A, lf("doc.txt", X))
    base_b = sync(empty(B), base_a, B)
    a = scanned(A, lf("doc.txt", Y, T0 + 5 * 10**9), index=base_a)  # later mtime: A wins
    b = scanned(B, lf("doc.txt", Z, T0 + 2 * 10**9), index=base_b)
    plan_a = plan_merge(a, b, A)
    plan_b = plan_merge(b, a, B)
    assert len(plan_a.conflicts) == len(plan_b.conflicts) == 1
    ca, cb = plan_a.conflicts[0], plan_b.conflicts[0]
    assert ca.conflict_path == cb.conflict_path
    assert ca.conflict_path == f"doc.sync-conflict-20231114-221322-{short_id(B)}.txt"
    assert ca.winner == cb.winner == A
    # A keeps its file and fetches B's under the conflict name; B moves its own aside, fetches A's
    assert [(f.path, f.entry.cid) for f in plan_a.fetches] == [(ca.conflict_path, Z)]
    assert [(m.src, m.dst) for m in plan_b.moves] == [("doc.txt", ca.conflict_path)]
    assert [(f.path, f.entry.cid) for f in plan_b.fetches] == [("doc.txt", Y)]
    a2, b2 = commit(a, plan_a, plan_a.keys), commit(b, plan_b, plan_b.keys)
    assert a2.by_path()["doc.txt"] == b2.by_path()["doc.txt"]
    assert plan_merge(a2, b2, A).empty and plan_merge(b2, a2, B).empty


def test_conflict_tie_breaks_on_peer_id() -> None:
    base = scanned(A, lf("f", X))
    a = scanned(A, lf("f", Y), index=base)
    b = scanned(B, lf("f", Z), index=sync(empty(B), base, B))
    b = dataclasses.replace(b, author=B)
    pa, pb = plan_merge(a, b, A), plan_merge(b, a, B)
    winner = max(A, B, key=lambda p: p.bytes)
    assert pa.conflicts[0].winner == pb.conflicts[0].winner == winner


def test_change_beats_delete_and_same_content_merges() -> None:
    base = scanned(A, lf("f", X))
    b0 = sync(empty(B), base, B)
    a_del = scanned(A, index=base)
    b_mod = scanned(B, lf("f", Y), index=b0)
    plan = plan_merge(a_del, b_mod, A)
    assert [f.path for f in plan.fetches] == ["f"] and not plan.conflicts
    assert plan_merge(b_mod, a_del, B).fetches == () and plan_merge(b_mod, a_del, B).deletes == ()
    a_same = scanned(A, lf("g", Z))
    b_same = scanned(B, lf("g", Z))
    plan = plan_merge(a_same, b_same, A)
    assert not plan.fetches and not plan.conflicts and plan.updates


def test_unauthorised_and_foreign_snapshots_ignored() -> None:
    c = scanned(C, lf("evil", X))
    plan = plan_merge(empty(A), c, A, writers={A, B})
    assert plan.rejected and plan.empty
    other = dataclasses.replace(scanned(B, lf("f", X)), folder=b"G" * 16)
    assert plan_merge(empty(A), other, A).rejected


def test_ignored_paths_not_planned() -> None:
    b = scanned(B, lf("x.tmp", X), lf("keep", Y))
    plan = plan_merge(empty(A), b, A, ignored=lambda p: p.endswith(".tmp"))
    assert [f.path for f in plan.fetches] == ["keep"]


def test_partial_commit_keeps_failed_paths() -> None:
    b = scanned(B, lf("one", X), lf("two", Y))
    plan = plan_merge(empty(A), b, A)
    a = commit(empty(A), plan, {"one"})
    assert "two" not in a.by_path() and a.version.get(B) == 1  # from "one"'s version only
    plan2 = plan_merge(a, b, A)
    assert [f.path for f in plan2.fetches] == ["two"]


def test_conflict_names() -> None:
    assert conflict_name("a/b/c.tar.gz", 0, A).startswith(
        "a/b/c.tar.sync-conflict-19700101-000000-"
    )
    assert conflict_name("a/b/c.tar.gz", 0, A).endswith(".gz")
    assert conflict_name(".bashrc", 0, A) == f".bashrc.sync-conflict-19700101-000000-{short_id(A)}"
    long = conflict_name("x" * 255, 0, A)
    assert len(long.encode()) <= 255
