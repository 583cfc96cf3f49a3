"""Applying a merge plan to a folder, safely.

Before anything is written, the bytes the plan claims are checked against the free space of the
folder's disk and the block store's (``InsufficientSpace`` refuses the whole plan). Then, in order:
conflict moves, renames (a fetch whose content a path being deleted holds: one rename, no
transfer), deletions (to ``.fileshare/trash/``), and the other fetches. A fetch asks
``ensure_blocks(root)`` only when the local store lacks part of the file's DAG, checks the root's
declared size against the claim, exports the file to ``.fileshare/tmp/``, sets mode and mtime, and
renames it into place. Every action first checks that the path is still as the index says
(unchanged since the last scan): a local change not yet scanned is never overwritten; that key is
skipped and the next scan and merge handle it (as a conflict if need be). All writes go through
``FolderRoot``, which refuses symlinks on the way, so nothing outside the folder is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..content.cid import CID
from ..content.ingest import export_file, local_source
from ..content.reader import file_size
from ..errors import FileshareError
from ..limits import SYNC_FREE_SPACE_MARGIN
from ..repo import Repo
from .merge import Delete, Fetch, Move, Plan
from .paths import FolderRoot
from .snapshot import Entry
from .state import CachedFile, FolderDB

EnsureBlocks = Callable[[CID], Awaitable[None]]
"""Fetch every block of the DAG under a root into the local store (supplied by the network side)."""


class InsufficientSpace(FileshareError):
    """A snapshot claims more bytes than the disk can hold."""


@dataclass(slots=True)
class ApplyResult:
    done: set[str] = field(default_factory=set)  # index keys whose actions all succeeded
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason
    written: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    trashed: list[str] = field(default_factory=list)
    requested: list[CID] = field(default_factory=list)  # roots passed to ensure_blocks


def check_space(root: FolderRoot, repo: Repo, folder_bytes: int, store_bytes: int) -> None:
    """Raise ``InsufficientSpace`` unless both writes fit with the margin to spare."""
    need: dict[int, tuple[int, str]] = {}
    for path, n in ((root.path, folder_bytes), (repo.path, store_bytes)):
        dev = os.stat(path).st_dev
        total, where = need.get(dev, (0, str(path)))
        need[dev] = (total + n, where)
    for dev, (n, where) in need.items():
        if n == 0:
            continue
        free = shutil.disk_usage(where).free
        if n + SYNC_FREE_SPACE_MARGIN > free:
            raise InsufficientSpace(
                f"the snapshot needs {n} bytes on the disk of {where} but only {free} are free "
                f"(keeping {SYNC_FREE_SPACE_MARGIN} spare); nothing was written (device {dev})"
            )


async def apply_plan(
    root: FolderRoot,
    repo: Repo,
    db: FolderDB,
    plan: Plan,
    ensure_blocks: EnsureBlocks,
) -> ApplyResult:
    """Carry out ``plan`` (see the module docstring); returns what was done and skipped."""
    result = ApplyResult()
    cache = await trio.to_thread.run_sync(db.cached)
    renames: dict[int, Delete] = {}
    deletes = {d.path: d for d in plan.deletes}
    for i, f in enumerate(plan.fetches):
        if f.source is not None and f.source in deletes:
            renames[i] = deletes.pop(f.source)
    missing: dict[CID, bool] = {}
    store_bytes = folder_bytes = 0
    for i, f in enumerate(plan.fetches):
        if i in renames:
            continue
        folder_bytes += f.entry.size
        cid = f.entry.cid
        assert cid is not None
        if cid not in missing:
            status = await trio.to_thread.run_sync(repo.dag_status, [cid])
            missing[cid] = not status.complete
            if missing[cid]:
                store_bytes += f.entry.size
    await trio.to_thread.run_sync(check_space, root, repo, folder_bytes, store_bytes)

    failed: set[str] = set()

    def fail(key: str, why: str) -> None:
        failed.add(key)
        result.skipped.setdefault(key, why)

    for m in plan.moves:
        try:
            await trio.to_thread.run_sync(_move, root, cache, m)
            result.renamed.append((m.src, m.dst))
        except (FileshareError, OSError) as exc:
            fail(m.key, str(exc))
    for i, d in renames.items():
        f = plan.fetches[i]
        if f.key in failed or d.key in failed:
            continue
        try:
            await trio.to_thread.run_sync(_rename, root, cache, d, f)
            result.renamed.append((d.path, f.path))
        except (FileshareError, OSError) as exc:
            fail(d.key, str(exc))
            fail(f.key, str(exc))
    for d in deletes.values():
        try:
            await trio.to_thread.run_sync(_delete, root, cache, d)
            result.trashed.append(d.path)
        except (FileshareError, OSError) as exc:
            fail(d.key, str(exc))
    for i, f in enumerate(plan.fetches):
        if i in renames or f.key in failed:
            continue
        try:
            if await _fetch(root, repo, cache, f, missing, ensure_blocks, result):
                result.written.append(f.path)
        except (FileshareError, OSError) as exc:
            fail(f.key, str(exc))
    touched = set(result.written) | {dst for _, dst in result.renamed}
    rows = [cache[p] for p in touched if p in cache]
    if rows:
        await trio.to_thread.run_sync(db.put_cached, rows)
    gone = [p for p in [*result.trashed, *(src for src, _ in result.renamed)] if p not in cache]
    if gone:
        await trio.to_thread.run_sync(db.drop_cached, gone)
    result.done = plan.keys - failed
    return result


# --- checks ---
def _holds(root: FolderRoot, cache: dict[str, CachedFile], rel: str, entry: Entry | None) -> bool:
    """True if ``rel`` is on disk as ``entry`` says (for None or a tombstone: absent)."""
    st = root.lstat(rel)
    if entry is None or entry.cid is None:
        return st is None
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    c = cache.get(rel)
    return (
        c is not None and c.cid == entry.cid and c.same_stat(st.st_size, st.st_mtime_ns, st.st_ino)
    )


def _require(root: FolderRoot, cache: dict[str, CachedFile], rel: str, entry: Entry | None) -> None:
    if not _holds(root, cache, rel, entry):
        raise FileshareError(f"{rel} changed locally since the last scan; left as it is")


def _moved_row(root: FolderRoot, old: CachedFile, dst: str) -> CachedFile:
    st = root.lstat(dst)
    assert st is not None
    return CachedFile(dst, st.st_size, st.st_mtime_ns, st.st_ino, old.mode, old.cid, old.tsize)


# --- actions (blocking; run in worker threads) ---
def _move(root: FolderRoot, cache: dict[str, CachedFile], m: Move) -> None:
    _require(root, cache, m.src, m.expect)
    root.rename(m.src, m.dst)
    cache[m.dst] = _moved_row(root, cache.pop(m.src), m.dst)


def _rename(root: FolderRoot, cache: dict[str, CachedFile], d: Delete, f: Fetch) -> None:
    _require(root, cache, d.path, d.expect)
    _require(root, cache, f.path, f.expect)
    if f.expect is not None:
        root.trash(f.path)
    root.rename(d.path, f.path)
    e = f.entry
    with root.parent(f.path) as (dfd, name):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            os.fchmod(fd, e.mode & 0o777)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            st = os.fstat(fd)
        finally:
            os.close(fd)
    old = cache.pop(d.path)
    cache[f.path] = CachedFile(
        f.path, st.st_size, st.st_mtime_ns, st.st_ino, e.mode, old.cid, old.tsize
    )
    root.prune_empty_parents(d.path)


def _delete(root: FolderRoot, cache: dict[str, CachedFile], d: Delete) -> None:
    _require(root, cache, d.path, d.expect)
    root.trash(d.path)
    cache.pop(d.path, None)


async def _fetch(
    root: FolderRoot,
    repo: Repo,
    cache: dict[str, CachedFile],
    f: Fetch,
    missing: dict[CID, bool],
    ensure_blocks: EnsureBlocks,
    result: ApplyResult,
) -> bool:
    """Write one file; False when the path already holds that content."""
    cid = f.entry.cid
    assert cid is not None
    if f.path != f.key and await trio.to_thread.run_sync(_holds, root, cache, f.path, f.entry):
        return False  # the conflict copy is already there
    await trio.to_thread.run_sync(_require, root, cache, f.path, f.expect)
    if missing.get(cid, True):
        result.requested.append(cid)
        await ensure_blocks(cid)
        status = await trio.to_thread.run_sync(repo.dag_status, [cid])
        if not status.complete:
            raise FileshareError(f"blocks of {f.path} ({cid}) are still missing")
        missing[cid] = False
    size = await file_size(cid, local_source(repo))
    if size != f.entry.size:
        raise FileshareError(
            f"{f.path}: the snapshot claims {f.entry.size} bytes, the file has {size}"
        )
    tmp = root.new_tmp_path()
    try:
        await export_file(repo, cid, tmp)
        await trio.to_thread.run_sync(_finish, root, cache, f, tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def _finish(root: FolderRoot, cache: dict[str, CachedFile], f: Fetch, tmp: Path) -> None:
    e = f.entry
    assert e.cid is not None
    os.chmod(tmp, e.mode & 0o777)
    os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
    st = os.stat(tmp)
    _require(root, cache, f.path, f.expect)  # last check, just before the rename
    root.install(tmp, f.path)
    cache[f.path] = CachedFile(
        f.path, st.st_size, st.st_mtime_ns, st.st_ino, e.mode, e.cid, e.tsize
    )
