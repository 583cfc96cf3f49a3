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
import errno
import logging
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..errors import DecodeError, FileshareError, NotFound
from ..limits import MAX_DAG_DEPTH, MIB
from ..repo import Repo
from .blockstore import Blockstore, no_space
from .cid import CID, RAW
from .dagpb import PBLink
from .hamt import hamt_entries
from .ingest import export_file, local_source
from .reader import Node, decode_block

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
    counts = _Counts()
    try:
        # pending directories; their block kept when small (a large one is read again later)
        stack: list[tuple[CID, bytes | None, Path, int]] = [(root, None, tmp, 0)]
        while stack:
            cid, block, dest, depth = stack.pop()
            if block is None:
                block = await get(cid)
            if depth > MAX_DAG_DEPTH:
                raise DecodeError(f"directory tree under {root} is deeper than {MAX_DAG_DEPTH}")
            entries = await _entries(repo, decode_block(cid, block), block)
            done = 0
            while done < len(entries):
                loaded = await trio.to_thread.run_sync(
                    _load, repo.blocks, entries[done : done + _BATCH]
                )
                done += len(loaded)
                for link, data in loaded:
                    assert link.name is not None  # checked by _entries
                    target = dest / link.name
                    node = decode_block(link.hash, data) if data is not None else None
                    if node is None or (node.kind == "file" and node.links):
                        # a large file: streamed from the store on its own (every block checked)
                        done_file = await export_file(repo, link.hash, target, fsync=fsync)
                        counts.size += done_file.size
                        counts.files += 1
                    elif node.kind in DIRECTORY_KINDS:
                        await trio.Path(target).mkdir()
                        counts.directories += 1
                        kept = data if data is not None and len(data) <= _KEEP_BYTES else None
                        stack.append((link.hash, kept, target, depth + 1))
                    elif node.kind == "raw":
                        counts.pending.append((target, node.data))
                    elif node.kind == "file":  # one node holding all its bytes
                        if node.filesize not in (None, len(node.data)):
                            raise DecodeError(f"file node {link.hash} holds {len(node.data)} "
                                              f"bytes but says {node.filesize}")  # fmt: skip
                        counts.pending.append((target, node.data))
                    else:
                        log.warning("skipping %s (a %s) under %s", target.relative_to(tmp),
                                    node.kind, root)  # fmt: skip
                        counts.skipped += 1
                await trio.to_thread.run_sync(counts.flush, fsync)
        await trio.Path(tmp).rename(out)
    except BaseException:
        with trio.CancelScope(shield=True), contextlib.suppress(OSError):
            await trio.to_thread.run_sync(shutil.rmtree, tmp)
        raise
    return TreeResult(root, out, counts.files, counts.directories, counts.size, counts.skipped)


_BATCH = 256  # directory entries whose blocks are read in one worker-thread call
_BATCH_BYTES = 16 * MIB  # ... unless they add up to this first (the rest: next call)
_KEEP_BYTES = 64 * 1024  # a pending subdirectory's block is kept in memory up to this size
_FSYNC_THREADS = 8  # concurrent fsyncs share journal commits


@dataclass(slots=True)
class _Counts:
    files: int = 0
    directories: int = 0
    size: int = 0
    skipped: int = 0
    pending: list[tuple[Path, bytes]] = field(default_factory=list)  # small files to write

    def flush(self, fsync: bool) -> None:
        """Worker thread: write the pending one-block files as new files, fsynced together."""
        fds: list[int] = []
        try:
            for target, data in self.pending:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(target, flags, 0o644)
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                self.files += 1
                self.size += len(data)
            if fsync and fds:
                with ThreadPoolExecutor(min(_FSYNC_THREADS, len(fds))) as pool:
                    list(pool.map(os.fsync, fds))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space(target.parent) from exc
            raise
        finally:
            for fd in fds:
                os.close(fd)
            self.pending.clear()


def _load(blocks: Blockstore, links: list[PBLink]) -> list[tuple[PBLink, bytes | None]]:
    """Worker thread: the verified root blocks of a prefix of ``links`` (at least one, about
    ``_BATCH_BYTES`` at most); None for a raw block over 1 MiB (a file streamed on its own)."""
    out: list[tuple[PBLink, bytes | None]] = []
    total = 0
    for link in links:
        if total >= _BATCH_BYTES:
            break
        if link.hash.codec == RAW:
            size = blocks.size_sync(link.hash)
            if size is None:
                raise NotFound(f"block {link.hash} is not in the local store")
            if size > MIB:
                out.append((link, None))
                continue
        data = blocks.get_sync(link.hash)
        out.append((link, data))
        total += len(data)
    return out


async def _entries(repo: Repo, node: Node, data: bytes) -> list[PBLink]:
    """A directory's entries (names already checked by ``decode_block`` for a plain one)."""
    if node.kind == "directory":
        return list(node.links)
    if node.kind != "hamt":
        raise DecodeError(f"{node.cid} is a {node.kind}, not a directory")
    cid = node.cid

    def listing() -> list[PBLink]:
        out = list(hamt_entries(data, repo.blocks.get_sync))
        names = [link.name for link in out]
        if len(set(names)) != len(names):
            raise DecodeError(f"sharded directory {cid} holds a name twice")
        return out

    return await trio.to_thread.run_sync(listing)
