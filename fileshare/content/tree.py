"""Write a UnixFS directory DAG (plain or sharded) from the local store to a new directory.

Everything is written under a temporary sibling ``.<name>.<random>.part/`` and renamed to the
destination once complete, so a crash or an error never leaves a half tree where the user expects a
whole one (the temporary directory is removed on error). Every block is verified on the way; entry
names are checked (no ``/``, ``..``, NUL, duplicates), so nothing is written outside the
destination. Symlinks and metadata nodes are skipped and counted: a symlink's target comes from
whoever made the DAG.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import trio

from ..errors import DecodeError, FileshareError
from ..limits import MAX_DAG_DEPTH
from ..repo import Repo
from .cid import CID
from .dagpb import PBLink
from .hamt import hamt_entries
from .ingest import export_file, local_source
from .reader import decode_block
from .unixfs import check_directory_links

__all__ = ["TreeResult", "export_tree", "is_directory"]

log = logging.getLogger("fileshare.content.tree")

DIRECTORY_KINDS = ("directory", "hamt")


@dataclass(frozen=True, slots=True)
class TreeResult:
    root: CID
    path: Path
    files: int
    directories: int
    size: int  # file bytes written
    skipped: int  # symlinks and other entries that are not files or directories


async def is_directory(repo: Repo, cid: CID) -> bool:
    """Whether the stored block ``cid`` is a UnixFS directory (plain or sharded)."""
    data = await local_source(repo)(cid)
    return decode_block(cid, data).kind in DIRECTORY_KINDS


async def export_tree(repo: Repo, root: CID, out: Path, *, fsync: bool = True) -> TreeResult:
    """Write the directory at ``root`` to the new directory ``out`` (it must not exist).

    Raises ``FileshareError`` if ``out`` exists, ``NotFound`` for a block the store lacks,
    ``VerificationError`` for a corrupt one, ``DecodeError`` for a malformed DAG or bad names.
    """
    if await trio.Path(out).exists() or await trio.Path(out).is_symlink():
        raise FileshareError(f"{out} already exists; give a new path for the directory")
    get = local_source(repo)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.part"
    await trio.Path(tmp).mkdir()
    files = directories = size = skipped = 0
    try:
        stack: list[tuple[CID, Path, int]] = [(root, tmp, 0)]
        while stack:
            cid, dest, depth = stack.pop()
            if depth > MAX_DAG_DEPTH:
                raise DecodeError(f"directory tree under {root} is deeper than {MAX_DAG_DEPTH}")
            for link in await _entries(repo, cid, await get(cid)):
                assert link.name is not None  # checked by _entries
                target = dest / link.name
                kind = decode_block(link.hash, await get(link.hash)).kind
                if kind in ("raw", "file"):
                    size += (await export_file(repo, link.hash, target, fsync=fsync)).size
                    files += 1
                elif kind in DIRECTORY_KINDS:
                    await trio.Path(target).mkdir()
                    directories += 1
                    stack.append((link.hash, target, depth + 1))
                else:
                    log.warning("skipping %s (a %s) under %s", target.relative_to(tmp), kind, root)
                    skipped += 1
        await trio.Path(tmp).rename(out)
    except BaseException:
        with trio.CancelScope(shield=True), contextlib.suppress(OSError):
            await trio.to_thread.run_sync(shutil.rmtree, tmp)
        raise
    return TreeResult(root, out, files, directories, size, skipped)


async def _entries(repo: Repo, cid: CID, data: bytes) -> list[PBLink]:
    node = decode_block(cid, data)
    if node.kind == "directory":
        check_directory_links(node.links)
        return list(node.links)
    if node.kind != "hamt":
        raise DecodeError(f"{cid} is a {node.kind}, not a directory")

    def listing() -> list[PBLink]:
        out = list(hamt_entries(data, repo.blocks.get_sync))
        names = [link.name for link in out]
        if len(set(names)) != len(names):
            raise DecodeError(f"sharded directory {cid} holds a name twice")
        return out

    return await trio.to_thread.run_sync(listing)
