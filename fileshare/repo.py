"""The node repository: a directory holding the block store, the SQLite metadata and the identity.

::

    <repo>/blocks/        Blockstore (blocks over 64 KiB one file each, smaller ones in small.sqlite)
    <repo>/meta.sqlite    pins (= shares): root CID, name, size, hash, profile, block count, time
    <repo>/identity.key   the node's private key (written by fileshare.identity)
    <repo>/repo.lock      flock: importers hold it shared, gc and repairs exclusive

``Repo`` methods are synchronous (SQLite and file I/O); trio code calls the slow ones (``gc``,
``verify``, ``dag_status``) through ``trio.to_thread.run_sync``. The SQLite connection is shared
between threads behind a lock. The schema is versioned with ``PRAGMA user_version``: to add a table,
append a statement to ``MIGRATIONS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from .content.blockstore import Blockstore
from .content.cid import CID, IDENTITY, RAW, hash_name_of
from .content.reader import child_cids, decode_block
from .errors import FileshareError, NotFound, VerificationError

MIGRATIONS: list[str] = [
    # 0 -> 1: pinned roots; every share is a pin (shared=1 once it is announced on the network)
    """
    CREATE TABLE pins (
        cid     TEXT PRIMARY KEY,
        name    TEXT NOT NULL DEFAULT '',
        size    INTEGER NOT NULL DEFAULT 0,
        hash    TEXT NOT NULL DEFAULT '',
        profile TEXT NOT NULL DEFAULT '',
        blocks  INTEGER NOT NULL DEFAULT 0,
        shared  INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    )
    """,
    # 1 -> 2: DHT routing table peers and their addresses (reloaded on start)
    """
    CREATE TABLE dht_peers (
        peer_id   BLOB PRIMARY KEY,
        addrs     BLOB NOT NULL,
        last_seen REAL NOT NULL
    )
    """,
    # 2 -> 3: sync scan cache: per folder and path, the stat that was imported and its root CID
    """
    CREATE TABLE sync_files (
        folder   TEXT NOT NULL,
        path     TEXT NOT NULL,
        size     INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        inode    INTEGER NOT NULL,
        mode     INTEGER NOT NULL,
        cid      TEXT NOT NULL,
        tsize    INTEGER NOT NULL,
        PRIMARY KEY (folder, path)
    )
    """,
    # 3 -> 4: sync folder index (versions and tombstones), one encoded snapshot body per folder
    "CREATE TABLE sync_index (folder TEXT PRIMARY KEY, body BLOB NOT NULL)",
]

LOCK_TIMEOUT = 30.0  # seconds gc waits for running imports before giving up


class RepoBusy(FileshareError):
    """Another process holds the repository lock (an import or a gc is running)."""


@dataclass(frozen=True, slots=True)
class Pin:
    cid: CID
    name: str = ""
    size: int = 0
    hash: str = ""
    profile: str = ""
    blocks: int = 0
    shared: bool = False
    created: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "cid": str(self.cid),
            "name": self.name,
            "size": self.size,
            "hash": self.hash,
            "profile": self.profile,
            "blocks": self.blocks,
            "shared": self.shared,
            "created": self.created,
        }


@dataclass(slots=True)
class DagStatus:
    """What a walk from some roots found: reachable multihashes, missing and corrupt blocks."""

    reachable: set[bytes] = field(default_factory=set)
    missing: list[CID] = field(default_factory=list)
    corrupt: list[CID] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.corrupt


@dataclass(frozen=True, slots=True)
class GcResult:
    removed_blocks: int
    removed_bytes: int
    kept_blocks: int
    temp_files: int

    def to_json(self) -> dict[str, int]:
        """What ``gc`` reports (CLI ``--json`` and the control API alike)."""
        return {
            "removed_blocks": self.removed_blocks,
            "removed_bytes": self.removed_bytes,
            "kept_blocks": self.kept_blocks,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    corrupt: list[CID]  # stored blocks whose bytes do not match their hash (raw-codec CIDs)
    missing: list[CID]  # blocks reachable from a pin that are not in the store
    removed: int  # corrupt blocks deleted (with remove_corrupt=True)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


class RepoLock:
    """An flock on ``repo.lock``; release with ``close()`` or as a context manager."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Repo:
    """An open repository. Create with ``Repo.open(path)``; close with ``close()``."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self.blocks = Blockstore(path / "blocks")
        self._db = db
        self._db_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path | str) -> Repo:
        """Open (creating if needed) the repository at ``path``."""
        path = Path(path).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "blocks").mkdir(exist_ok=True)
        except FileExistsError:
            raise FileshareError(f"repository path {path} exists and is not a directory") from None
        try:
            db = sqlite3.connect(
                path / "meta.sqlite", timeout=10.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db)
        except sqlite3.Error as exc:
            raise FileshareError(
                f"cannot open repository metadata {path / 'meta.sqlite'}: {exc}"
            ) from exc
        return cls(path, db)

    @property
    def identity_path(self) -> Path:
        return self.path / "identity.key"

    @property
    def db_path(self) -> Path:
        return self.path / "meta.sqlite"

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        self.blocks.close()

    def __enter__(self) -> Repo:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- locking ---
    def try_lock(self, exclusive: bool) -> RepoLock | None:
        """Take the repository lock without waiting; None if it is held in a conflicting mode."""
        fd = os.open(self.path / "repo.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return RepoLock(fd)

    def lock(self, exclusive: bool, timeout: float = LOCK_TIMEOUT) -> RepoLock:
        """Take the repository lock, waiting up to ``timeout`` seconds (blocking; not for trio)."""
        deadline = time.monotonic() + timeout
        while True:
            held = self.try_lock(exclusive)
            if held is not None:
                return held
            if time.monotonic() >= deadline:
                raise RepoBusy(f"repository {self.path} is busy (an import or gc is running)")
            time.sleep(0.05)

    # --- pins (shares) ---
    def add_pin(self, pin: Pin) -> Pin:
        """Record a pin, replacing any earlier record of the same root."""
        if not pin.created:
            pin = replace(pin, created=time.time())
        with self._db_lock, _db_errors(self.db_path):
            self._db.execute(
                "INSERT OR REPLACE INTO pins (cid, name, size, hash, profile, blocks, shared, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(pin.cid),
                    pin.name,
                    pin.size,
                    pin.hash,
                    pin.profile,
                    pin.blocks,
                    int(pin.shared),
                    pin.created,
                ),
            )
        return pin

    def replace_named_pin(self, pin: Pin) -> Pin:
        """Record ``pin`` and drop every other pin of the same name (a folder's current root)."""
        pin = self.add_pin(pin)
        with self._db_lock, _db_errors(self.db_path):
            self._db.execute(
                "DELETE FROM pins WHERE name = ? AND cid <> ?", (pin.name, str(pin.cid))
            )
        return pin

    def unpin(self, cid: CID) -> bool:
        """Forget a pin; its blocks go at the next ``gc`` unless another pin reaches them."""
        with self._db_lock, _db_errors(self.db_path):
            cur = self._db.execute("DELETE FROM pins WHERE cid = ?", (str(cid),))
        return cur.rowcount > 0

    def get_pin(self, cid: CID) -> Pin | None:
        with self._db_lock:
            row = self._db.execute(_SELECT + " WHERE cid = ?", (str(cid),)).fetchone()
        return _row_pin(row) if row else None

    def pins(self) -> list[Pin]:
        """Every pin, oldest first."""
        with self._db_lock:
            rows = self._db.execute(_SELECT + " ORDER BY created, cid").fetchall()
        return [_row_pin(r) for r in rows]

    # --- DHT routing table (fileshare.protocols.kad.service) ---
    def dht_peers(self, limit: int) -> list[tuple[bytes, bytes, float]]:
        """Saved routing table rows ``(peer id, packed addrs, last seen)``, most recent first."""
        with self._db_lock, _db_errors(self.db_path):
            rows = self._db.execute(
                "SELECT peer_id, addrs, last_seen FROM dht_peers ORDER BY last_seen DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(bytes(a), bytes(b), float(c)) for a, b, c in rows]

    def save_dht_peers(self, rows: list[tuple[bytes, bytes, float]]) -> None:
        """Replace the saved routing table with ``rows``."""
        with self._db_lock, _db_errors(self.db_path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM dht_peers")
                self._db.executemany("INSERT OR REPLACE INTO dht_peers VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- DAG walks, gc, verify ---
    def dag_status(self, roots: list[CID]) -> DagStatus:
        """Walk the DAGs under ``roots`` in the store (reading and verifying inner nodes only)."""
        status = DagStatus()
        stack = list(reversed(roots))
        while stack:
            cid = stack.pop()
            if cid.multihash in status.reachable or cid.hash_code == IDENTITY:
                continue
            if cid.codec == RAW:
                if self.blocks.has_sync(cid):
                    status.reachable.add(cid.multihash)
                else:
                    status.missing.append(cid)
                continue
            try:
                data = self.blocks.get_sync(cid)
                children = child_cids(cid, data)
            except NotFound:
                status.missing.append(cid)
                continue
            except FileshareError:  # corrupt or undecodable
                status.reachable.add(cid.multihash)
                status.corrupt.append(cid)
                continue
            status.reachable.add(cid.multihash)
            stack.extend(reversed(children))
        return status

    def gc(self) -> GcResult:
        """Delete every block not reachable from a pin, and stale temporary files.

        Refuses (``FileshareError``) when a pinned DAG has a corrupt inner node: its children could
        not be marked, and deleting them would lose data a repair still needs.
        """
        with self.lock(exclusive=True):
            status = self.dag_status([p.cid for p in self.pins()])
            if status.corrupt:
                raise VerificationError(
                    f"gc refused: pinned block {status.corrupt[0]} is corrupt "
                    f"({len(status.corrupt)} in all); run `fileshare verify --remove-corrupt` "
                    "and add the file again, or unpin it"
                )
            removed = removed_bytes = kept = 0
            for mh in list(self.blocks.iter_multihashes()):
                if mh in status.reachable:
                    kept += 1
                    continue
                size = self.blocks.size_sync(mh)
                if size is not None and self.blocks.delete_sync(mh):
                    removed += 1
                    removed_bytes += size
            temp = self.blocks.remove_temp_files_sync()
        return GcResult(removed, removed_bytes, kept, temp)

    def verify(self, remove_corrupt: bool = False) -> VerifyReport:
        """Hash every stored block; also list blocks that pinned DAGs need but the store lacks."""
        lock = self.lock(exclusive=True) if remove_corrupt else contextlib.nullcontext()
        with lock:
            corrupt: list[CID] = []
            checked = 0
            for cid in self.blocks:
                checked += 1
                try:
                    self.blocks.get_sync(cid)
                except NotFound:
                    checked -= 1  # deleted meanwhile
                except VerificationError:
                    corrupt.append(cid)
            removed = 0
            if remove_corrupt:
                removed = sum(self.blocks.delete_sync(c) for c in corrupt)
            status = self.dag_status([p.cid for p in self.pins()])
            bad = {c.multihash for c in corrupt}
            missing = [c for c in status.missing if c.multihash not in bad]
        return VerifyReport(checked, corrupt, missing, removed)


_SELECT = "SELECT cid, name, size, hash, profile, blocks, shared, created FROM pins"


def _row_pin(row: tuple[str, str, int, str, str, int, int, float]) -> Pin:
    cid, name, size, hash_name, profile, blocks, shared, created = row
    return Pin(CID.parse(cid), name, size, hash_name, profile, blocks, bool(shared), created)


@contextlib.contextmanager
def _db_errors(path: Path) -> Iterator[None]:
    """SQLite failures (disk full, read-only, locked too long) as one-line errors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise FileshareError(f"repository metadata {path}: {exc}") from exc


def _migrate(db: sqlite3.Connection) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise FileshareError(
            f"repository metadata schema {version} is newer than this program understands"
        )
    for i in range(version, len(MIGRATIONS)):
        db.execute("BEGIN IMMEDIATE")
        try:
            (current,) = db.execute("PRAGMA user_version").fetchone()
            if current == i:  # another process may have migrated meanwhile
                db.execute(MIGRATIONS[i])
                db.execute(f"PRAGMA user_version = {i + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def pin_cid(repo: Repo, root: CID, name: str = "") -> Pin:
    """Pin ``root`` if its whole DAG is in the store (blocking)."""
    status = repo.dag_status([root])
    if status.corrupt:
        raise VerificationError(f"cannot pin {root}: block {status.corrupt[0]} is corrupt")
    if status.missing:
        raise NotFound(
            f"cannot pin {root}: {len(status.missing)} of its blocks are not in the local store"
            f" (first: {status.missing[0]})"
        )
    node = decode_block(root, repo.blocks.get_sync(root))
    hash_name = hash_name_of(root.hash_code)
    old = repo.get_pin(root)
    return repo.add_pin(
        Pin(
            root,
            name=name or (old.name if old else ""),
            size=node.filesize or 0,
            hash=hash_name,
            profile=old.profile if old else "",
            blocks=len(status.reachable),
            shared=old.shared if old else False,
        )
    )
