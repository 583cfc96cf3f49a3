"""Scanning a synced folder: which regular files it holds now, imported into the block store.

A walk (in a worker thread) lists regular files, skipping symlinks, the ``.fileshare/`` area,
ignored paths and names that are not safe to sync. A file whose ``(size, mtime_ns, inode)`` equals
its scan-cache row keeps its cached root CID; any other file is imported once it is stable: its
mtime is older than the settle interval, or the same stat was seen a settle interval ago. Files not
yet stable are reported in ``unstable`` with ``retry_after`` (seconds) so the caller rescans then.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..content.ingest import FileChanged, import_file
from ..content.layout import Layout, make_layout
from ..errors import FileshareError, NotFound
from ..limits import SYNC_IMPORT_CONCURRENCY, SYNC_SETTLE_SECONDS
from ..repo import Repo
from .ignore import IgnoreRules
from .merge import LocalFile
from .paths import RESERVED_DIR, UnsafePath, check_relpath
from .snapshot import file_tsize
from .state import CachedFile, FolderDB

_Stat = tuple[int, int, int]  # size, mtime_ns, inode


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
        todo: list[tuple[str, _Stat, int]] = []
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

    async def _import_all(self, todo: list[tuple[str, _Stat, int]], result: ScanResult) -> None:
        limiter = trio.CapacityLimiter(SYNC_IMPORT_CONCURRENCY)
        rows: list[CachedFile] = []

        async def one(rel: str, key: _Stat, mode: int) -> None:
            async with limiter:
                row = await self._import(rel, key, mode, result)
            if row is not None:
                rows.append(row)

        async with trio.open_nursery() as nursery:
            for rel, key, mode in todo:
                nursery.start_soon(one, rel, key, mode)
        if rows:
            await trio.to_thread.run_sync(self.db.put_cached, rows)

    async def _import(
        self, rel: str, key: _Stat, mode: int, result: ScanResult
    ) -> CachedFile | None:
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
        with contextlib.suppress(KeyError):
            del self._pending[rel]
        result.imported.append(rel)
        result.files[rel] = LocalFile(rel, res.root, res.size, key[1], mode, tsize)
        return CachedFile(rel, res.size, key[1], key[2], mode, res.root, tsize)
