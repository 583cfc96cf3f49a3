"""Sync path safety: which names are accepted, writes never leave the folder, watcher paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.errors import DecodeError, FileshareError
from fileshare.sync.ignore import IgnoreRules
from fileshare.sync.paths import (
    FolderRoot,
    UnsafePath,
    check_relpath,
    is_safe_relpath,
    resolve_inside,
)
from fileshare.sync.watcher import relevant_paths

GOOD = ["a", "a/b.txt", "dir/sub/ü.md", ".hidden", "a..b", "...", "x/.fileshare", "name with space"]
BAD = [
    "",
    "/etc/passwd",
    "../x",
    "a/../../x",
    "a/..",
    "./a",
    "a//b",
    "a/",
    "C:\\x",
    "c:x",
    "a\\b",
    "a\x00b",
    ".fileshare/tmp/x",
    ".fileshare",
    "a/" * 70 + "b",
    "x" * 256,
    "\udcff",  # a lone surrogate: a name that was not valid UTF-8 on disk
]


@pytest.mark.parametrize("path", GOOD)
def test_good_paths(path: str) -> None:
    assert check_relpath(path) == path


@pytest.mark.parametrize("path", BAD)
def test_bad_paths(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_relpath(path)
    assert issubclass(UnsafePath, DecodeError)


def test_resolve_inside_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "inlink").symlink_to(root / "in")
    assert resolve_inside(root, "in/x") == root / "in" / "x"
    assert resolve_inside(root, "inlink/x") == root / "in" / "x"
    with pytest.raises(UnsafePath):
        resolve_inside(root, "link/x")


def test_folder_root_never_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with FolderRoot(root) as fr:
        tmp = fr.new_tmp_path()
        tmp.write_bytes(b"x")
        with pytest.raises(UnsafePath):
            fr.install(tmp, "link/evil")
        (root / "file").write_bytes(b"")
        with pytest.raises(UnsafePath):
            fr.install(tmp, "file/evil")  # a file where a directory is needed
        fr.install(tmp, "ok/new")
    assert list(outside.iterdir()) == []
    assert (root / "ok" / "new").read_bytes() == b"x"


def test_folder_root_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (root / "f").symlink_to(target)
    with FolderRoot(root) as fr:
        tmp = fr.new_tmp_path()
        tmp.write_bytes(b"new")
        with pytest.raises(UnsafePath):
            fr.install(tmp, "f")
    assert target.read_bytes() == b"keep"


def test_write_files_checks_then_installs(tmp_path: Path) -> None:
    mtime = 1_600_000_000_123_456_789
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_bytes(b"replace me")
    (tmp_path / "d" / "keep").write_bytes(b"mine")
    files = [
        ("d/new/one", b"one", 0o640, mtime),
        ("d/old", b"", 0o600, 5),
        ("d/keep", b"x" * 70_000, 0o755, 7),
    ]
    seen: dict[str, int | None] = {}

    def check(rel: str, st: os.stat_result | None) -> None:
        seen[rel] = None if st is None else st.st_size
        if rel == "d/keep":
            raise FileshareError("changed locally")

    with FolderRoot(tmp_path) as fr:
        out = fr.write_files(files, check)
        assert list((tmp_path / ".fileshare" / "tmp").iterdir()) == []
    assert seen == {"d/new/one": None, "d/old": 10, "d/keep": 4}
    for (rel, data, mode, t), got in zip(files[:2], out[:2], strict=True):
        assert isinstance(got, os.stat_result)
        assert (got.st_size, got.st_mode & 0o777, got.st_mtime_ns) == (len(data), mode, t)
        on_disk = (tmp_path / rel).stat()
        assert (tmp_path / rel).read_bytes() == data and on_disk.st_ino == got.st_ino
    assert isinstance(out[2], FileshareError) and (tmp_path / "d" / "keep").read_bytes() == b"mine"


def test_write_files_never_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (root / "flink").symlink_to(outside / "target")
    with FolderRoot(root) as fr:
        out = fr.write_files(
            [("link/evil", b"1", 0o644, 0), ("flink", b"2", 0o644, 0)], lambda _r, _s: None
        )
        assert all(isinstance(o, UnsafePath) for o in out)
        os.rmdir(fr.tmp_path)
        fr.tmp_path.symlink_to(outside)
        with pytest.raises(UnsafePath):
            fr.write_files([("ok", b"evil", 0o644, 0)], lambda _r, _s: None)
    assert list(outside.iterdir()) == []
    assert not (root / "ok").exists()


def test_trash_and_prune(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_bytes(b"1")
    with FolderRoot(tmp_path) as fr:
        fr.trash("d/e/f")
    assert not (tmp_path / "d").exists()
    trashed = list((tmp_path / ".fileshare" / "trash").iterdir())
    assert len(trashed) == 1 and trashed[0].read_bytes() == b"1"


def test_ignore_rules() -> None:
    rules = IgnoreRules(["*.tmp", "build/", "!keep.tmp", "/top.txt"])
    assert rules.matches("a/b.tmp")
    assert not rules.matches("keep.tmp")
    assert rules.matches("build", is_dir=True)
    assert rules.matches("x/build/y")
    assert rules.matches("top.txt") and not rules.matches("sub/top.txt")
    assert rules.matches(".fileshare/anything") and rules.matches(".fileshareignore")
    assert not rules.matches("normal.txt")


components = st.one_of(
    st.sampled_from(["..", ".", "", ".fileshare", "C:", "a\\b", "\x00", "/", "link"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(components, min_size=1, max_size=6), st.booleans())
def test_no_generated_name_escapes(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str], absolute: bool
) -> None:
    base = tmp_path_factory.mktemp("h")
    root = base / "root"
    root.mkdir()
    (root / "link").symlink_to(base)
    path = ("/" if absolute else "") + "/".join(parts)
    if not is_safe_relpath(path):
        return
    full = os.path.normpath(root / path)
    assert full.startswith(str(root) + os.sep)
    assert path.split("/")[0] != ".fileshare"
    with FolderRoot(root) as fr:
        tmp = fr.new_tmp_path()
        tmp.write_bytes(b"x")
        try:
            fr.install(tmp, path)
        except (UnsafePath, OSError):
            tmp.unlink(missing_ok=True)
    # nothing appeared outside the folder
    assert sorted(p.name for p in base.iterdir()) == ["root"]


def test_watcher_keeps_only_paths_outside_the_reserved_area() -> None:
    base = "/data/folder"
    events = [
        "/data/folder/a.txt",
        "/data/folder/sub/b.txt",
        "/data/folder/.fileshare",
        "/data/folder/.fileshare/tmp/0123",
        "/data/folder/.fileshareignore",
        "/data/folder/x/.fileshare/y",  # reserved only at the top
        "/data/folder",
        "/data/folder2/c.txt",
    ]
    assert relevant_paths(base, events) == {
        "a.txt",
        "sub/b.txt",
        ".fileshareignore",
        "x/.fileshare/y",
    }
