"""Sync path safety: which names are accepted, and writes never leave the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fileshare.errors import DecodeError
from fileshare.sync.ignore import IgnoreRules
from fileshare.sync.paths import (
    FolderRoot,
    UnsafePath,
    check_relpath,
    is_safe_relpath,
    resolve_inside,
)

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
