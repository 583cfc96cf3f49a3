"""Blocks on disk, keyed by multihash: small ones in one SQLite table, the rest one file each.

Blocks up to ``SMALL_BLOCK_MAX`` (64 KiB: small files, the DAG's inner nodes) are rows of
``<root>/small.sqlite`` (see ``smallblocks``: an inode per block costs more than the block).
Larger blocks are files, ``<root>/<shard>/<key>``, where ``key`` is the lower-case unpadded base32
of the block's multihash and ``shard`` is the two characters before the key's last one (the
"next-to-last/2" scheme, which spreads keys evenly because those characters come from the
digest). Keying by multihash means CIDv0/CIDv1 and raw/dag-pb CIDs of the same bytes share one
block. A small block stored as a file by an older version is still found and served.

File writes go to a temporary name in the shard directory and are renamed into place, so a killed
process never leaves a torn block under a block's name; rows are written in transactions. Blocks
are not fsynced one by one (that costs more than the whole import); ``put_many(..., sync=True)``
fsyncs a batch of files and their directories and commits rows with ``synchronous=FULL``. After
a power loss an unsynced block may be missing or truncated; ``get`` verifies hashes by default so
such a block is reported (``VerificationError``), never served, and ``put`` rewrites a block
whose file has the wrong size.

The ``*_sync`` methods do blocking file I/O and are safe to call from several threads at once; the
async methods run them in a worker thread so they can be awaited under trio.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from ..errors import FileshareError, LimitExceeded, NotFound, VerificationError
from ..limits import MAX_BLOCK_SIZE
from .cid import CID, RAW, decode_multihash
from .smallblocks import SMALL_BLOCK_MAX, BlockDatabaseError, SmallBlocks

Buffer = bytes | bytearray | memoryview

TMP_SUFFIX = ".tmp"
_tmp_counter = itertools.count()


class NoSpace(FileshareError):
    """The disk holding the store (or an output file) has no space left."""


def no_space(path: Path | str) -> NoSpace:
    return NoSpace(f"no space left on device while writing to {path}; free some space and retry")


def multihash_key(multihash: bytes) -> str:
    """The file name of a block: unpadded lower-case base32 of its multihash."""
    return base64.b32encode(multihash).decode("ascii").rstrip("=").lower()


def key_multihash(key: str) -> bytes:
    """Inverse of ``multihash_key``; ``ValueError`` or ``DecodeError`` for a name that is not one."""
    text = key.upper()
    raw = base64.b32decode(text + "=" * (-len(text) % 8))
    decode_multihash(raw)
    return raw


@dataclass(frozen=True, slots=True)
class StoreStats:
    blocks: int
    bytes: int


class Blockstore:
    """A directory of blocks. Thread-safe; see the module docstring for durability."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._root = str(self.root)
        self.small = SmallBlocks(self.root / "small.sqlite")

    def close(self) -> None:
        self.small.close()

    # --- paths ---
    def path_for(self, cid_or_multihash: CID | bytes) -> Path:
        """Where the block is (or would be) as a file; small blocks are rows instead."""
        return Path(self._path(cid_or_multihash))

    def _path(self, cid_or_multihash: CID | bytes) -> str:
        mh = cid_or_multihash.multihash if isinstance(cid_or_multihash, CID) else cid_or_multihash
        key = multihash_key(mh)
        return f"{self._root}/{key[-3:-1]}/{key}"

    # --- sync API (blocking; call from worker threads) ---
    def has_sync(self, cid: CID) -> bool:
        return self.small.size(cid.multihash) is not None or os.path.isfile(self._path(cid))

    def size_sync(self, cid_or_multihash: CID | bytes) -> int | None:
        """The stored block's size in bytes, or None if it is not here."""
        mh = cid_or_multihash.multihash if isinstance(cid_or_multihash, CID) else cid_or_multihash
        try:
            return os.stat(self._path(mh)).st_size
        except OSError:
            return self.small.size(mh)

    def sizes_sync(self, multihashes: Iterable[bytes]) -> dict[bytes, int | None]:
        out: dict[bytes, int | None] = {}
        rows: list[bytes] = []
        for mh in multihashes:
            try:
                out[mh] = os.stat(self._path(mh)).st_size
            except OSError:
                out[mh] = None
                rows.append(mh)
        out.update(self.small.sizes(rows))
        return out

    def get_sync(self, cid: CID, verify: bool = True) -> bytes:
        """The block's bytes; ``NotFound`` if absent, ``VerificationError`` if it is corrupt."""
        row = self.small.get(cid.multihash)
        if row is not None:
            return self._checked_row(cid, row, verify)
        path = self._path(cid)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"block {cid} is not in the local store") from None
        try:
            size = os.fstat(fd).st_size
            if size > MAX_BLOCK_SIZE:
                raise VerificationError(
                    f"block {cid} is corrupt in the store ({path}): "
                    f"larger than {MAX_BLOCK_SIZE} bytes"
                )
            data = os.read(fd, size)
            while len(data) < size:  # regular files rarely return short reads
                more = os.read(fd, size - len(data))
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        if verify and not cid.matches(data):
            raise VerificationError(
                f"block {cid} is corrupt in the store ({path}): its content does not match its "
                "hash; run `fileshare verify --remove-corrupt` and fetch or add it again"
            )
        return data

    def _checked_row(self, cid: CID, row: bytes, verify: bool) -> bytes:
        if verify and not cid.matches(row):
            raise VerificationError(
                f"block {cid} is corrupt in the store ({self.small.path}): its content does "
                "not match its hash; run `fileshare verify --remove-corrupt` and fetch or add it "
                "again"
            )
        return row

    def put_sync(self, cid: CID, data: Buffer, verified: bool = False, sync: bool = False) -> bool:
        """Store one block; returns False if it was already there. See ``put_many_sync``."""
        return self.put_many_sync([(cid, data)], verified=verified, sync=sync) == 1

    def put_many_sync(
        self, blocks: Iterable[tuple[CID, Buffer]], verified: bool = False, sync: bool = False
    ) -> int:
        """Store blocks, skipping ones already present; returns how many files were written.

        ``verified=True`` skips re-hashing (for callers that just computed the CID from the data).
        ``sync=True`` fsyncs each written file and, once, each directory touched.
        """
        written = 0
        dirs: set[str] = set()
        rows: list[tuple[bytes, Buffer]] = []
        for cid, data in blocks:
            if len(data) > MAX_BLOCK_SIZE:
                raise LimitExceeded(f"block {cid} is {len(data)} bytes (limit {MAX_BLOCK_SIZE})")
            if not verified:
                cid.verify(data)
            path = self._path(cid)
            try:
                if os.stat(path).st_size == len(data):
                    continue  # present as a file (small ones: written by an older version)
                if len(data) <= SMALL_BLOCK_MAX:
                    os.unlink(path)  # a torn file of a small block: it becomes a row
            except FileNotFoundError:
                pass
            if len(data) <= SMALL_BLOCK_MAX:
                rows.append((cid.multihash, data))
                continue
            self._write(path, data, sync)
            dirs.add(os.path.dirname(path))
            written += 1
        try:
            written += self.small.put_many(rows, sync)
        except BlockDatabaseError as exc:
            if exc.full:
                raise no_space(self.root) from exc
            raise
        if sync:
            for d in dirs:
                _fsync_dir(d)
            if dirs:
                _fsync_dir(self._root)
        return written

    def _write(self, path: str, data: Buffer, sync: bool) -> None:
        tmp = f"{path}.{os.getpid()}-{next(_tmp_counter)}{TMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(tmp, flags, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space(self.root) from exc
            raise

    def delete_sync(self, cid_or_multihash: CID | bytes) -> bool:
        mh = cid_or_multihash.multihash if isinstance(cid_or_multihash, CID) else cid_or_multihash
        try:
            os.unlink(self._path(mh))
        except FileNotFoundError:
            return self.small.delete(mh)
        return True

    def iter_multihashes(self) -> Iterator[bytes]:
        """Multihashes of every stored block (files that are not block names are skipped)."""
        yield from self.small.multihashes()
        yield from self._file_multihashes()

    def _file_multihashes(self) -> Iterator[bytes]:
        for shard in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                name = entry.name
                if "." in name or name[-3:-1] != shard.name:
                    continue
                try:
                    yield key_multihash(name)
                except (ValueError, FileshareError):
                    continue

    def __iter__(self) -> Iterator[CID]:
        """Every stored block as a CIDv1 with the raw codec (the codec is not recorded)."""
        for mh in self.iter_multihashes():
            yield CID(1, RAW, mh)

    def stats_sync(self) -> StoreStats:
        count, total = self.small.stats()
        for mh in self._file_multihashes():
            try:
                total += os.stat(self._path(mh)).st_size
            except FileNotFoundError:
                continue
            count += 1
        return StoreStats(count, total)

    def remove_temp_files_sync(self) -> int:
        """Delete leftover temporary files (from killed writers); only safe with no writer running."""
        removed = 0
        for shard in os.scandir(self.root):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if entry.name.endswith(TMP_SUFFIX):
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    # --- async API (trio) ---
    async def has(self, cid: CID) -> bool:
        return await trio.to_thread.run_sync(self.has_sync, cid)

    async def get(self, cid: CID, verify: bool = True) -> bytes:
        return await trio.to_thread.run_sync(self.get_sync, cid, verify)

    async def put(self, cid: CID, data: Buffer, verified: bool = False) -> bool:
        return await trio.to_thread.run_sync(self.put_sync, cid, data, verified)

    async def put_many(
        self, blocks: Iterable[tuple[CID, Buffer]], verified: bool = False, sync: bool = False
    ) -> int:
        batch = list(blocks)
        return await trio.to_thread.run_sync(self.put_many_sync, batch, verified, sync)

    async def delete(self, cid: CID) -> bool:
        return await trio.to_thread.run_sync(self.delete_sync, cid)

    async def stats(self) -> StoreStats:
        return await trio.to_thread.run_sync(self.stats_sync)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
