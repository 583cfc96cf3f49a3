"""Directory trees out of the store: plain and sharded directories, bad names, atomicity."""

from __future__ import annotations

from pathlib import Path

import pytest

from fileshare.content.cid import CID, DAG_PB, RAW, SHA2_256
from fileshare.content.dagpb import PBLink, encode_node
from fileshare.content.tree import export_tree, is_directory
from fileshare.content.unixfs import UnixFSData, encode_directory, encode_symlink
from fileshare.errors import DecodeError, FileshareError, NotFound
from fileshare.repo import Repo

from ..storeutil import folder_tree


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo.open(tmp_path / "repo")
    yield r  # type: ignore[misc]
    r.close()


def store_tree(repo: Repo, files: dict[str, bytes]) -> CID:
    root, blocks = folder_tree(files)
    repo.blocks.put_many_sync(blocks)
    return root


def read_tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


async def test_plain_and_sharded_directories(repo: Repo, tmp_path: Path) -> None:
    files = {f"many/n{i:05d}.txt": f"{i}\n".encode() for i in range(5000)}  # sharded
    files |= {"a/b/c.txt": b"deep", "top.bin": bytes(range(256)) * 1000, "empty.txt": b""}
    root = store_tree(repo, files)
    assert await is_directory(repo, root)
    out = tmp_path / "out"
    result = await export_tree(repo, root, out, fsync=False)
    assert read_tree(out) == files
    assert (result.files, result.directories, result.skipped) == (len(files), 3, 0)
    assert result.size == sum(len(d) for d in files.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "repo"]  # no temporary left
    with pytest.raises(FileshareError, match="already exists"):
        await export_tree(repo, root, out)
    assert not await is_directory(repo, CID.from_data(RAW, b"deep"))


async def test_symlinks_skipped_bad_names_and_missing_blocks(repo: Repo, tmp_path: Path) -> None:
    leaf = CID.from_data(RAW, b"x", SHA2_256)
    link_data = encode_symlink("/etc/passwd")
    link = CID.from_data(DAG_PB, link_data, SHA2_256)
    good = encode_directory([PBLink(leaf, "x.txt", 1), PBLink(link, "ln", len(link_data))])
    good_cid = CID.from_data(DAG_PB, good, SHA2_256)
    repo.blocks.put_many_sync([(leaf, b"x"), (link, link_data), (good_cid, good)])
    result = await export_tree(repo, good_cid, tmp_path / "g", fsync=False)
    assert read_tree(tmp_path / "g") == {"x.txt": b"x"} and result.skipped == 1
    assert not (tmp_path / "g" / "ln").exists()

    # a hostile DAG naming an entry ".." (our encoder refuses it: build the node by hand)
    from fileshare.content.dagpb import PBNode

    evil = encode_node(PBNode([PBLink(leaf, "..", 1)], UnixFSData(1).encode()))
    evil_cid = CID.from_data(DAG_PB, evil, SHA2_256)
    repo.blocks.put_sync(evil_cid, evil)
    with pytest.raises(DecodeError):
        await export_tree(repo, evil_cid, tmp_path / "e")
    # a block missing under the root: nothing is left behind
    gone = encode_directory([PBLink(CID.from_data(RAW, b"absent", SHA2_256), "f", 6)])
    gone_cid = CID.from_data(DAG_PB, gone, SHA2_256)
    repo.blocks.put_sync(gone_cid, gone)
    with pytest.raises(NotFound):
        await export_tree(repo, gone_cid, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "repo"]


async def test_large_and_multi_block_files(repo: Repo, tmp_path: Path) -> None:
    """A raw block over 1 MiB and a multi-block file are streamed on their own, bytes exact."""
    from fileshare.content.builder import build_dag, chunk_bytes
    from fileshare.content.layout import make_layout
    from fileshare.identity.keys import PrivateKey
    from fileshare.identity.peerid import PeerId
    from fileshare.sync.snapshot import Entry, build_tree
    from fileshare.sync.version import Version

    author = PeerId.from_public_key(PrivateKey.from_seed(b"\x09" * 32).public_key())
    one_block = bytes(range(256)) * 6000  # 1.5 MiB: one raw block
    chunked = bytes(range(251)) * 400  # 100 KB in 4 KiB chunks: a dag-pb root with links
    root_cid, dag = build_dag(chunk_bytes(chunked, 4096), make_layout(chunk_size=4096))
    raw_cid = CID.from_data(RAW, one_block)
    entries = [
        Entry("a/one.bin", raw_cid, len(one_block), 0, 0o644, len(one_block), author, Version()),
        Entry("a/chunked.bin", root_cid, len(chunked), 0, 0o644, 0, author, Version()),
    ]
    root, dirs = build_tree(entries)
    repo.blocks.put_many_sync(
        [(raw_cid, one_block), *((b.cid, b.data) for b in dag), *((b.cid, b.data) for b in dirs)]
    )
    result = await export_tree(repo, root, tmp_path / "out")
    assert read_tree(tmp_path / "out") == {"a/one.bin": one_block, "a/chunked.bin": chunked}
    assert result.files == 2 and result.size == len(one_block) + len(chunked)
