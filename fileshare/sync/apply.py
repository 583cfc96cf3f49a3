"""Applying a merge plan to a folder, safely.

Before anything is written, the bytes the plan claims are checked against the free space of the
folder's disk and the block store's (``InsufficientSpace`` refuses the whole plan). Then, in order:
conflict moves, renames (a fetch whose content a path being deleted holds: one rename, no
transfer), deletions (to ``.fileshare/trash/``), and the other fetches. A fetch asks
``ensure_blocks(root)`` only when the local store lacks part of the file's DAG, checks the root's
declared size against the claim, writes the file to ``.fileshare/tmp/`` (verifying every block;
a large file not yet local may instead be streamed there by ``fetch_file`` as it arrives),
sets mode and mtime, fsyncs it and renames it into place. Every action first checks that the path
is still as the index says (unchanged since the last scan): a local change not yet scanned is never
overwritten; that key is skipped and the next scan and merge handle it (as a conflict if need be).
All writes go through ``FolderRoot``, which refuses symlinks on the way, so nothing outside the
folder is written.

The blocking work runs in worker threads in batches (``APPLY_BATCH`` actions, or small files up to
``APPLY_BATCH_BYTES``), not one thread round trip per step. A batch of small files is read from
the store whole, written, fsynced on several threads at once, then each file is checked and
renamed into place (``FolderRoot.write_files``); ``APPLY_PARALLEL`` batches are in flight. Files
above ``SMALL_FILE_BYTES`` are written one at a time, streamed. With ``blocks_ready``, each batch
waits only for its own blocks, so writing overlaps a bulk fetch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..content.blockstore import Blockstore
from ..content.cid import CID, DAG_PB
from ..content.ingest import export_file, local_source
from ..content.reader import NotAFileError, decode_block, file_size, read_file
from ..errors import FileshareError
from ..limits import MIB, SYNC_FREE_SPACE_MARGIN
from ..repo import Repo
from .merge import Delete, Fetch, Move, Plan
from .paths import FolderRoot
from .snapshot import Entry
from .state import CachedFile, FolderDB

EnsureBlocks = Callable[[CID], Awaitable[None]]
"""Fetch every block of the DAG under a root into the local store (supplied by the network side)."""

FetchFile = Callable[[CID, Path], Awaitable[None]]
"""Optional: fetch the DAG under a root and write the file it holds to a path (verified, fsynced),
the bytes written as they arrive; used for large files whose blocks are not local."""

BlocksReady = Callable[[Sequence[CID]], Awaitable[None]]
"""Optional: wait while a fetch running in the background (``SyncService``) may still bring the
DAGs under these roots; return when they are local or that fetch ended. Roots still missing then
go to ``EnsureBlocks``. It lets files be written while later blocks are still arriving. If it
raises (``FileshareError``: that fetch failed), files whose blocks are still missing are skipped
with that error; the rest of the plan is carried out."""

SMALL_FILE_BYTES = 1 * MIB  # files up to this size are written in batches from memory
APPLY_BATCH = 256  # actions (moves, deletes, small files) per worker-thread call
APPLY_BATCH_BYTES = 16 * MIB  # file bytes held in memory by one batch of small files
APPLY_PARALLEL = 2  # batches of small files in flight (one's fsyncs overlap the next's writes)

_T = TypeVar("_T")


class InsufficientSpace(FileshareError):
    """A snapshot claims more bytes than the disk can hold."""


@dataclass(slots=True)
class ApplyResult:
    done: set[str] = field(default_factory=set)  # index keys whose actions all succeeded
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason
    written: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    trashed: list[str] = field(default_factory=list)
    requested: list[CID] = field(default_factory=list)  # roots passed to ensure_blocks, fetch_file


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
    blocks_ready: BlocksReady | None = None,
    fetch_file: FetchFile | None = None,
) -> ApplyResult:
    """Carry out ``plan`` (see the module docstring); returns what was done and skipped."""
    cache = await trio.to_thread.run_sync(db.cached)
    renames: dict[int, Delete] = {}
    deletes = {d.path: d for d in plan.deletes}
    for i, f in enumerate(plan.fetches):
        if f.source is not None and f.source in deletes:
            renames[i] = deletes.pop(f.source)
    fetches = [f for i, f in enumerate(plan.fetches) if i not in renames]
    claims: dict[CID, int] = {}  # each distinct root with the size its first fetch claims
    for f in fetches:
        assert f.entry.cid is not None
        claims.setdefault(f.entry.cid, f.entry.size)
    missing = await trio.to_thread.run_sync(_missing_roots, repo, list(claims))
    folder_bytes = sum(f.entry.size for f in fetches)
    store_bytes = sum(n for cid, n in claims.items() if missing[cid])
    await trio.to_thread.run_sync(check_space, root, repo, folder_bytes, store_bytes)

    a = _Applier(root, repo, cache, missing, ensure_blocks, blocks_ready, fetch_file)
    try:
        # moves, renames and deletions, in that order, a batch per worker-thread call
        steps: list[Callable[[], None]] = [partial(a.move, m) for m in plan.moves]
        steps += [partial(a.rename, d, plan.fetches[i]) for i, d in renames.items()]
        steps += [partial(a.delete, d) for d in deletes.values()]
        for i in range(0, len(steps), APPLY_BATCH):
            await trio.to_thread.run_sync(_run_steps, steps[i : i + APPLY_BATCH])
        await a.fetch_all_small([f for f in fetches if f.entry.size <= SMALL_FILE_BYTES])
        for f in fetches:
            if f.entry.size > SMALL_FILE_BYTES and f.key not in a.failed:
                await a.fetch_large(f)
    finally:  # what was written is recorded even if the rest was cancelled
        result = a.result
        touched = set(result.written) | {dst for _, dst in result.renamed}
        rows = [cache[p] for p in touched if p in cache]
        gone = [p for p in [*result.trashed, *(src for src, _ in result.renamed)] if p not in cache]
        with trio.CancelScope(shield=True):
            if rows:
                await trio.to_thread.run_sync(db.put_cached, rows)
            if gone:
                await trio.to_thread.run_sync(db.drop_cached, gone)
    result.done = plan.keys - a.failed
    return result


def _missing_roots(repo: Repo, roots: Sequence[CID]) -> dict[CID, bool]:
    """For each root: True when part of its DAG is not in the local store. Blocking."""
    return {cid: not repo.dag_status([cid]).complete for cid in roots}


def _run_steps(steps: list[Callable[[], None]]) -> None:
    for step in steps:
        step()


def _batches(fetches: Sequence[Fetch]) -> list[list[Fetch]]:
    """Fetches cut into batches of at most ``APPLY_BATCH`` files and ~``APPLY_BATCH_BYTES``."""
    out: list[list[Fetch]] = []
    batch: list[Fetch] = []
    size = 0
    for f in fetches:
        if batch and (len(batch) >= APPLY_BATCH or size + f.entry.size > APPLY_BATCH_BYTES):
            out.append(batch)
            batch, size = [], 0
        batch.append(f)
        size += f.entry.size
    if batch:
        out.append(batch)
    return out


class _Applier:
    """State of one ``apply_plan``. Methods without ``async`` block (worker threads). Batches of
    small files run ``APPLY_PARALLEL`` at a time: they share this state, but not paths, and only
    make single dict, set and list operations on it (atomic in CPython)."""

    def __init__(
        self,
        root: FolderRoot,
        repo: Repo,
        cache: dict[str, CachedFile],
        missing: dict[CID, bool],
        ensure_blocks: EnsureBlocks,
        blocks_ready: BlocksReady | None,
        fetch_file: FetchFile | None,
    ) -> None:
        self.root = root
        self.repo = repo
        self.cache = cache
        self.missing = missing  # root -> part of its DAG not local (as last checked)
        self.ensure_blocks = ensure_blocks
        self.blocks_ready = blocks_ready
        self.fetch_file = fetch_file
        self.bulk_error: str | None = None  # blocks_ready failed: what is still missing is skipped
        self.result = ApplyResult()
        self.failed: set[str] = set()

    def fail(self, key: str, why: str) -> None:
        self.failed.add(key)
        self.result.skipped.setdefault(key, why)

    # --- moves, renames, deletions (blocking) ---
    def move(self, m: Move) -> None:
        try:
            _move(self.root, self.cache, m)
            self.result.renamed.append((m.src, m.dst))
        except (FileshareError, OSError) as exc:
            self.fail(m.key, str(exc))

    def rename(self, d: Delete, f: Fetch) -> None:
        if f.key in self.failed or d.key in self.failed:
            return
        try:
            _rename(self.root, self.cache, d, f)
            self.result.renamed.append((d.path, f.path))
        except (FileshareError, OSError) as exc:
            self.fail(d.key, str(exc))
            self.fail(f.key, str(exc))

    def delete(self, d: Delete) -> None:
        try:
            _delete(self.root, self.cache, d)
            self.result.trashed.append(d.path)
        except (FileshareError, OSError) as exc:
            self.fail(d.key, str(exc))

    # --- fetches ---
    async def _get_blocks(self, fetches: Sequence[Fetch]) -> list[Fetch]:
        """Make the DAGs of ``fetches`` local (waiting on ``blocks_ready``, then asking
        ``ensure_blocks`` for what is still missing); returns the fetches not failed."""
        roots = list(dict.fromkeys(f.entry.cid for f in fetches if f.entry.cid is not None))
        wanted = [cid for cid in roots if self.missing.get(cid, True)]
        if wanted and self.blocks_ready is not None and self.bulk_error is None:
            try:
                await self.blocks_ready(wanted)
            except (FileshareError, OSError) as exc:
                self.bulk_error = f"the fetch of the snapshot's files failed: {exc}"
            self.missing.update(await trio.to_thread.run_sync(_missing_roots, self.repo, wanted))
        errors: dict[CID, str] = {}
        for cid in wanted:
            if self.missing[cid] and self.bulk_error is not None:
                errors[cid] = self.bulk_error  # not one stalled fetch per file after it
            elif self.missing[cid]:
                self.result.requested.append(cid)
                try:
                    await self.ensure_blocks(cid)
                except (FileshareError, OSError) as exc:
                    errors[cid] = str(exc)
        out: list[Fetch] = []
        for f in fetches:
            if f.entry.cid in errors:
                self.fail(f.key, errors[f.entry.cid])
            else:
                out.append(f)
        return out

    async def fetch_all_small(self, fetches: list[Fetch]) -> None:
        """The small files in batches, ``APPLY_PARALLEL`` at a time, taken in plan order."""
        batches = iter(_batches(fetches))

        async def worker() -> None:
            for batch in batches:  # shared: each batch is taken once, in order
                await self.fetch_small(batch)

        async with trio.open_nursery() as nursery:
            for _ in range(APPLY_PARALLEL):
                nursery.start_soon(worker)

    async def fetch_small(self, batch: list[Fetch]) -> None:
        """Checks in one thread call, missing DAGs fetched, then the writes in another (each
        file read from the store verified, fsynced, renamed into place)."""
        todo = await trio.to_thread.run_sync(self.precheck, batch)
        todo = await self._get_blocks(todo)
        self.result.written += await trio.to_thread.run_sync(self.write_small, todo)

    def precheck(self, batch: list[Fetch]) -> list[Fetch]:
        """The fetches still to write: not failed, not already there, the path as expected."""
        todo: list[Fetch] = []
        for f in batch:
            if f.key in self.failed:
                continue
            try:
                if f.path != f.key and _holds(self.root, self.cache, f.path, f.entry):
                    continue  # the conflict copy is already there
                _require(self.root, self.cache, f.path, f.expect)
            except (FileshareError, OSError) as exc:
                self.fail(f.key, str(exc))
                continue
            todo.append(f)
        return todo

    def _check_local(self, f: Fetch) -> CID:
        cid = f.entry.cid
        assert cid is not None
        if self.missing.get(cid, True):
            if not self.repo.dag_status([cid]).complete:
                raise FileshareError(f"blocks of {f.path} ({cid}) are still missing")
            self.missing[cid] = False
        return cid

    def write_small(self, todo: list[Fetch]) -> list[str]:
        """Read the files from the store (verified), write, fsync and install them."""
        ready: list[tuple[Fetch, bytes]] = []
        for f in todo:
            try:
                ready.append((f, _read_local(self.repo.blocks, self._check_local(f), f)))
            except (FileshareError, OSError) as exc:
                self.fail(f.key, str(exc))
        expect = {f.path: f.expect for f, _ in ready}

        def check(rel: str, st: os.stat_result | None) -> None:  # just before the rename
            if not _matches(self.cache, rel, expect[rel], st):
                raise FileshareError(f"{rel} changed locally since the last scan; left as it is")

        files = [(f.path, data, f.entry.mode & 0o777, f.entry.mtime_ns) for f, data in ready]
        written: list[str] = []
        for (f, _), st in zip(ready, self.root.write_files(files, check), strict=True):
            if isinstance(st, Exception):
                self.fail(f.key, str(st))
                continue
            self.cache[f.path] = _row(f, st)
            written.append(f.path)
        return written

    async def fetch_large(self, f: Fetch) -> None:
        """One large file: streamed by ``fetch_file`` while it arrives when its blocks are not
        local (and no bulk fetch brings them), else written from the store by ``export_file``."""
        cid = f.entry.cid
        assert cid is not None
        tmp = self.root.new_tmp_path()
        try:
            if f.path != f.key and await trio.to_thread.run_sync(
                _holds, self.root, self.cache, f.path, f.entry
            ):
                return  # the conflict copy is already there
            await trio.to_thread.run_sync(_require, self.root, self.cache, f.path, f.expect)
            streamed = False
            if self.missing.get(cid, True) and self.fetch_file and not self.blocks_ready:
                self.result.requested.append(cid)
                await self.fetch_file(cid, tmp)
                streamed = True
            elif not await self._get_blocks([f]):
                return
            await trio.to_thread.run_sync(self._check_local, f)
            size = await file_size(cid, local_source(self.repo))
            if size != f.entry.size:
                raise FileshareError(
                    f"{f.path}: the snapshot claims {f.entry.size} bytes, the file has {size}"
                )
            if not streamed:
                await export_file(self.repo, cid, tmp)
            await trio.to_thread.run_sync(_finish, self.root, self.cache, f, tmp)
        except (FileshareError, OSError) as exc:
            self.fail(f.key, str(exc))
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.result.written.append(f.path)


def _row(f: Fetch, st: os.stat_result) -> CachedFile:
    e = f.entry
    assert e.cid is not None
    return CachedFile(f.path, st.st_size, st.st_mtime_ns, st.st_ino, e.mode, e.cid, e.tsize)


def _read_local(store: Blockstore, cid: CID, f: Fetch) -> bytes:
    """The bytes of a small file from the local store, every block verified. Blocking."""
    first = store.get_sync(cid, verify=True)
    node = decode_block(cid, first)
    if node.filesize is None:
        raise NotAFileError(f"{f.path}: {cid} is a {node.kind}, not a file")
    if node.filesize != f.entry.size:
        raise FileshareError(
            f"{f.path}: the snapshot claims {f.entry.size} bytes, the file has {node.filesize}"
        )
    if cid.codec != DAG_PB:
        return first

    async def get(c: CID) -> bytes:
        return first if c == cid else store.get_sync(c, verify=True)

    async def collect(chunks: AsyncIterator[bytes]) -> bytes:
        return b"".join([chunk async for chunk in chunks])

    return _run_now(collect(read_file(cid, get)))


def _run_now(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (its awaits are all synchronous) to completion."""
    try:
        coro.send(None)
    except StopIteration as stop:
        value: _T = stop.value
        return value
    coro.close()
    raise RuntimeError("a local read suspended")


# --- checks ---
def _holds(root: FolderRoot, cache: dict[str, CachedFile], rel: str, entry: Entry | None) -> bool:
    """True if ``rel`` is on disk as ``entry`` says (for None or a tombstone: absent)."""
    return _matches(cache, rel, entry, root.lstat(rel))


def _matches(
    cache: dict[str, CachedFile], rel: str, entry: Entry | None, st: os.stat_result | None
) -> bool:
    """``_holds`` given the ``lstat`` of ``rel`` (None: absent)."""
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


def _finish(root: FolderRoot, cache: dict[str, CachedFile], f: Fetch, tmp: Path) -> None:
    e = f.entry
    assert e.cid is not None
    os.chmod(tmp, e.mode & 0o777)
    os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
    st = os.stat(tmp)
    _require(root, cache, f.path, f.expect)  # last check, just before the rename
    root.install(tmp, f.path)
    cache[f.path] = _row(f, st)
