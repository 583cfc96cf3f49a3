"""Scanning a synced folder: which regular files it holds now, imported into the block store.

A walk (in a worker thread) lists regular files, skipping symlinks, the ``.fileshare/`` area,
ignored paths and names that are not safe to sync. A file whose ``(size, mtime_ns, inode)`` equals
its scan-cache row keeps its cached root CID; any other file is imported once it is stable: its
mtime is older than the settle interval, or the same stat was seen a settle interval ago. Files not
yet stable are reported in ``unstable`` with ``retry_after`` (seconds) so the caller rescans then.

Files up to ``SMALL_FILE_BYTES`` are imported in batches, one worker-thread call each (read,
check the stat held, hash, one ``put_many`` for the batch, pin each root), under one shared repo
lock; larger files go through ``import_file`` one at a time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..content.builder import build_dag, chunk_bytes
from ..content.cid import CID
from ..content.ingest import FileChanged, import_file, layout_names, lock_shared
from ..content.layout import Layout, make_layout
from ..errors import FileshareError, NotFound
from ..limits import MIB, SYNC_IMPORT_CONCURRENCY, SYNC_SETTLE_SECONDS
from ..repo import Pin, Repo, RepoBusy
from .ignore import IgnoreRules
from .merge import LocalFile
from .paths import RESERVED_DIR, UnsafePath, check_relpath
from .snapshot import file_tsize, root_tsize
from .state import CachedFile, FolderDB

_Stat = tuple[int, int, int]  # size, mtime_ns, inode
_Todo = tuple[str, _Stat, int]  # path, stat seen by the walk, mode

SMALL_FILE_BYTES = 1 * MIB  # files up to this size are imported in batches
IMPORT_BATCH = 256  # small files per worker-thread call
IMPORT_BATCH_BYTES = 16 * MIB  # file bytes held in memory by one batch


@dataclass(slots=True)
class ScanResult:
    files: dict[str, LocalFile] = field(default_factory=dict)
    unstable: set[str] = field(default_factory=set)  # changed, not yet settled: shared later
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason (unsafe, unreadable)
    imported: list[str] = field(default_factory=list)
    retry_after: float | None = None


def walk(root: Path, ignore: IgnoreRules) -> tuple[dict[str, os.stat_result], dict[str, str]]:
    """Regular files below ``root`` by relative path, and skipped names with the reason. Blocking."""
    found: dict[str, os.stat_result] = {}
    skipped: dict[str, str] = {}
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            it = os.scandir(root / prefix if prefix else root)
        except OSError as exc:
            skipped[prefix or "."] = f"cannot list: {exc.strerror}"
            continue
        with it:
            for entry in it:
                rel = f"{prefix}/{entry.name}" if prefix else entry.name
                if not prefix and entry.name == RESERVED_DIR:
                    continue
                try:
                    check_relpath(rel)
                except UnsafePath as exc:
                    skipped[rel.encode("utf-8", "backslashreplace").decode()] = str(exc)
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not ignore.matches(rel, is_dir=True):
                        stack.append(rel)
                elif stat.S_ISREG(st.st_mode) and not ignore.matches(rel):
                    found[rel] = st
    return found, skipped


class Scanner:
    """Scans one folder; keeps the settle bookkeeping between scans (in memory)."""

    def __init__(
        self,
        root: Path | str,
        repo: Repo,
        db: FolderDB,
        *,
        layout: Layout | None = None,
        ignore: IgnoreRules | None = None,
        settle: float = SYNC_SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.root = Path(root)
        self.repo = repo
        self.db = db
        self.layout = layout or make_layout()
        self.fixed_ignore = ignore
        self.ignore = ignore or IgnoreRules()
        self.settle = settle
        self._clock = clock
        self._wall_ns = wall_ns
        self._pending: dict[str, tuple[_Stat, float]] = {}  # path -> (stat, first seen)

    async def scan(self) -> ScanResult:
        """Walk, import what changed and settled, update the scan cache."""
        if self.fixed_ignore is None:
            self.ignore = await trio.to_thread.run_sync(IgnoreRules.load, self.root)
        found, skipped = await trio.to_thread.run_sync(walk, self.root, self.ignore)
        cache = await trio.to_thread.run_sync(self.db.cached)
        result = ScanResult(skipped=skipped)
        now, wall = self._clock(), self._wall_ns()
        todo: list[_Todo] = []
        retry: list[float] = []
        for rel, st in found.items():
            key = (st.st_size, st.st_mtime_ns, st.st_ino)
            mode = st.st_mode & 0o777
            c = cache.get(rel)
            if c is not None and c.same_stat(*key):
                result.files[rel] = LocalFile(rel, c.cid, c.size, c.mtime_ns, mode, c.tsize)
                continue
            age = (wall - st.st_mtime_ns) / 1e9
            seen = self._pending.get(rel)
            if seen is None or seen[0] != key:
                self._pending[rel] = seen = (key, now)
            waited = now - seen[1]
            if age >= self.settle or waited >= self.settle:
                todo.append((rel, key, mode))
            else:
                result.unstable.add(rel)
                retry.append(self.settle - max(age, waited))
        for rel in list(self._pending):
            if rel not in found:
                del self._pending[rel]
        gone = [p for p in cache if p not in found]
        if gone:
            await trio.to_thread.run_sync(self.db.drop_cached, gone)
        await self._import_all(todo, result)
        if result.unstable:
            retry.append(self.settle)
            result.retry_after = max(0.01, min(retry))
        return result

    async def _import_all(self, todo: list[_Todo], result: ScanResult) -> None:
        rows: list[CachedFile] = []
        small = [t for t in todo if t[1][0] <= SMALL_FILE_BYTES]
        if small:
            await self._import_small(small, result, rows)
        limiter = trio.CapacityLimiter(SYNC_IMPORT_CONCURRENCY)

        async def one(rel: str, key: _Stat, mode: int) -> None:
            async with limiter:
                row = await self._import(rel, key, mode, result)
            if row is not None:
                rows.append(row)

        async with trio.open_nursery() as nursery:
            for rel, key, mode in todo:
                if key[0] > SMALL_FILE_BYTES:
                    nursery.start_soon(one, rel, key, mode)
        if rows:
            await trio.to_thread.run_sync(self.db.put_cached, rows)

    async def _import_small(
        self, todo: list[_Todo], result: ScanResult, rows: list[CachedFile]
    ) -> None:
        try:
            lock = await lock_shared(self.repo)
        except RepoBusy as exc:
            for rel, _, _ in todo:
                result.skipped[rel] = str(exc)
            return
        try:
            for batch in _batches(todo):
                done = await trio.to_thread.run_sync(
                    _import_batch, self.root, self.repo, self.layout, batch
                )
                for (rel, key, mode), outcome in zip(batch, done, strict=True):
                    if isinstance(outcome, _Imported):
                        rows.append(self._imported(rel, key, mode, outcome, result))
                    elif outcome == _UNSTABLE:
                        result.unstable.add(rel)
                    elif outcome != _GONE:
                        result.skipped[rel] = outcome
        finally:
            lock.close()

    def _imported(
        self, rel: str, key: _Stat, mode: int, res: _Imported, result: ScanResult
    ) -> CachedFile:
        with contextlib.suppress(KeyError):
            del self._pending[rel]
        result.imported.append(rel)
        result.files[rel] = LocalFile(rel, res.root, res.size, key[1], mode, res.tsize)
        return CachedFile(rel, res.size, key[1], key[2], mode, res.root, res.tsize)

    async def _import(
        self, rel: str, key: _Stat, mode: int, result: ScanResult
    ) -> CachedFile | None:
        """Import one (large) file with ``import_file``; its cache row, None if not imported."""
        path = self.root / rel
        try:
            res = await import_file(self.repo, path, self.layout, name=rel)
            tsize = await trio.to_thread.run_sync(file_tsize, self.repo.blocks, res.root)
            st = await trio.to_thread.run_sync(os.lstat, path)
        except FileChanged:
            result.unstable.add(rel)
            return None
        except (NotFound, FileNotFoundError):
            return None  # deleted meanwhile: the next scan sees it gone
        except (FileshareError, OSError) as exc:
            result.skipped[rel] = str(exc)
            return None
        if (st.st_size, st.st_mtime_ns, st.st_ino) != key or not stat.S_ISREG(st.st_mode):
            result.unstable.add(rel)  # written to while we read it
            return None
        return self._imported(rel, key, mode, _Imported(res.root, res.size, tsize), result)


@dataclass(frozen=True, slots=True)
class _Imported:
    root: CID
    size: int
    tsize: int


_UNSTABLE = "unstable"  # changed while being read: retried by a later scan
_GONE = "gone"  # deleted meanwhile: the next scan sees it gone
_Outcome = _Imported | str  # or the reason it was skipped


def _batches(todo: list[_Todo]) -> list[list[_Todo]]:
    out: list[list[_Todo]] = []
    batch: list[_Todo] = []
    size = 0
    for t in todo:
        if batch and (len(batch) >= IMPORT_BATCH or size + t[1][0] > IMPORT_BATCH_BYTES):
            out.append(batch)
            batch, size = [], 0
        batch.append(t)
        size += t[1][0]
    if batch:
        out.append(batch)
    return out


def _import_batch(root: Path, repo: Repo, layout: Layout, batch: list[_Todo]) -> list[_Outcome]:
    """Blocking: import small files in one go (the caller holds the shared repo lock).

    Each file is read whole and kept only if its stat before and after the read, and its
    ``lstat`` by name, all equal the walk's. Its blocks are built as ``import_file`` would build
    them, stored with one ``put_many`` for the batch, then each root is pinned like an import.
    """
    outcomes: list[_Outcome] = []
    blocks: list[tuple[CID, bytes]] = []
    pins: list[Pin] = []
    hash_name, profile = layout_names(layout)
    base = str(root)
    for rel, key, _mode in batch:
        path = f"{base}/{rel}"
        try:
            data = _read_stable(path, key)
        except FileNotFoundError:
            outcomes.append(_GONE)
            continue
        except PermissionError:
            outcomes.append(f"permission denied reading {path}")
            continue
        except OSError as exc:
            outcomes.append(_UNSTABLE if exc.errno == errno.ELOOP else str(exc))
            continue
        if data is None:
            outcomes.append(_UNSTABLE)
            continue
        cid, built = build_dag(chunk_bytes(data, layout.chunk_size), layout)
        top = next(b for b in reversed(built) if b.cid == cid)
        blocks += [(b.cid, b.data) for b in built]
        pin = Pin(cid, name=rel, size=len(data), hash=hash_name, profile=profile,
                  blocks=len(built), shared=False)  # fmt: skip
        pins.append(pin)
        outcomes.append(_Imported(cid, len(data), root_tsize(cid, top.data)))
    try:
        repo.blocks.put_many_sync(blocks, verified=True)
        for pin in pins:
            repo.add_pin(pin)
    except (FileshareError, OSError) as exc:
        return [o if not isinstance(o, _Imported) else str(exc) for o in outcomes]
    return outcomes


def _read_stable(path: str, key: _Stat) -> bytes | None:
    """The bytes of the regular file at ``path`` if its stat is ``key`` throughout, else None."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _key(os.fstat(fd)) != key:
            return None
        size = key[0]
        parts: list[bytes] = []
        got = 0
        while got <= size:  # one byte more than expected shows a file that grew
            part = os.read(fd, size + 1 - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        if got != size or _key(os.fstat(fd)) != key or _key(os.lstat(path)) != key:
            return None
    finally:
        os.close(fd)
    return b"".join(parts)


def _key(st: os.stat_result) -> _Stat | None:
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)
