"""Per-folder sync state in the repository's SQLite file: the scan cache and the folder index.

The scan cache maps a path to the ``(size, mtime_ns, inode)`` it had when it was imported and the
resulting root CID, so a rescan re-imports only files whose stat changed. The index is the node's
view of the folder (every path with its version vector, and tombstones), saved as one encoded
snapshot body. Tables are created by ``fileshare.repo.MIGRATIONS``; this module opens its own
connection (WAL mode lets it share the file with ``Repo``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..content.cid import CID
from ..errors import DecodeError, FileshareError
from ..identity.peerid import PeerId
from ..repo import Repo
from .snapshot import Snapshot, decode_snapshot, encode_snapshot
from .version import Version


@dataclass(frozen=True, slots=True)
class CachedFile:
    """A file as last imported (or written by a sync) and its root CID."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    mode: int
    cid: CID
    tsize: int

    def same_stat(self, size: int, mtime_ns: int, inode: int) -> bool:
        return (self.size, self.mtime_ns, self.inode) == (size, mtime_ns, inode)


class FolderDB:
    """Sync state of one folder. Thread-safe; methods are blocking (SQLite)."""

    def __init__(self, repo: Repo, folder: bytes) -> None:
        self.folder = folder.hex()
        self._folder_raw = folder
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                repo.db_path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise FileshareError(f"cannot open sync state in {repo.db_path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise FileshareError(f"sync state: {exc}") from exc

    # --- scan cache ---
    def cached(self) -> dict[str, CachedFile]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns, inode, mode, cid, tsize FROM sync_files"
                " WHERE folder = ?",
                (self.folder,),
            ).fetchall()
        return {r[0]: CachedFile(r[0], r[1], r[2], r[3], r[4], CID.parse(r[5]), r[6]) for r in rows}

    def put_cached(self, files: Iterable[CachedFile]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO sync_files"
                " (folder, path, size, mtime_ns, inode, mode, cid, tsize)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (self.folder, f.path, f.size, f.mtime_ns, f.inode, f.mode, str(f.cid), f.tsize)
                    for f in files
                ],
            )

    def drop_cached(self, paths: Iterable[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM sync_files WHERE folder = ? AND path = ?",
                [(self.folder, p) for p in paths],
            )

    # --- index ---
    def load_index(self, me: PeerId) -> Snapshot:
        """The saved index (an unsigned snapshot without root), or an empty one."""
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM sync_index WHERE folder = ?", (self.folder,)
            ).fetchone()
        if row is None:
            return Snapshot(self._folder_raw, me, Version())
        try:
            return decode_snapshot(bytes(row[0]))
        except DecodeError as exc:
            raise FileshareError(f"sync index of folder {self.folder} is damaged: {exc}") from None

    def save_index(self, index: Snapshot) -> None:
        body = encode_snapshot(index)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO sync_index (folder, body) VALUES (?, ?)",
                (self.folder, body),
            )
