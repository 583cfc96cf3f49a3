"""Import a file into the repository and export one back out, streaming, on trio.

Import: the file is split into batches of chunks (about ``BATCH_BYTES``). ``WORKERS`` batches are
processed at once, each in a worker thread that reads it into the worker's own reused buffer
(``os.preadv``), hashes its chunks into leaf blocks and writes them to the store in one go; the
trio task feeds the leaf CIDs to the ``DagBuilder`` in file order and writes the inner nodes it
completes. Memory is ``WORKERS`` buffers whatever the file size. Blocks are not fsynced unless
``durable=True`` (see ``blockstore``); the pin is committed after every block is written.

Export: the DAG is read block by block from a ``GetBlock`` source (the local store by default,
verifying each block; a network fetcher plugs in the same way), written to a temporary file next to
the destination, fsynced and renamed into place. On any error or cancellation the temporary file is
removed and the destination is left untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import blake3
import trio

from ..errors import FileshareError, NotFound
from ..limits import MIB
from ..repo import LOCK_TIMEOUT, Pin, Repo, RepoBusy, RepoLock
from ..wire.varint import encode_varint
from .blockstore import Blockstore, NoSpace
from .builder import Block, DagBuilder
from .cid import BLAKE3, CID, DAG_PB, DIGEST_SIZES, RAW, hash_digest, hash_name_of
from .layout import PROFILES, Layout
from .reader import GetBlock, child_cids, decode_block, read_file

Progress = Callable[[int, int], None]
"""Called on the trio thread as ``progress(bytes_done, bytes_total)``."""

BATCH_BYTES = 8 * MIB  # file bytes one worker thread reads, hashes and writes per call
WORKERS = max(2, min(4, os.cpu_count() or 2))  # batches in flight (threads)
WRITE_BATCH = 8 * MIB  # export: bytes gathered before one writev
PREFETCH = 8  # export: blocks fetched ahead of the writer


@dataclass(frozen=True, slots=True)
class ImportResult:
    root: CID
    size: int
    block_count: int


@dataclass(frozen=True, slots=True)
class ExportResult:
    root: CID
    size: int
    path: Path


class FileChanged(FileshareError):
    """The source file changed size while it was being imported."""


def layout_names(layout: Layout) -> tuple[str, str]:
    """(hash name, profile name) describing ``layout``.

    The profile is a PROFILES key, that key plus ``/chunk-N`` when only the chunk size differs,
    or "custom".
    """
    hash_name = hash_name_of(layout.hash_code, "unknown")
    for name, base in PROFILES.items():
        same = base.with_hash(layout.hash_code)
        if same == layout:
            return hash_name, name
        if replace(same, chunk_size=layout.chunk_size) == layout:
            return hash_name, f"{name}/chunk-{layout.chunk_size}"
    return hash_name, "custom"


# --- import ---
async def import_file(
    repo: Repo,
    path: Path | str,
    layout: Layout,
    progress: Progress | None = None,
    *,
    name: str | None = None,
    shared: bool = False,
    durable: bool = False,
) -> ImportResult:
    """Import ``path`` as a UnixFS file, pin its root and record it; returns the root CID."""
    path = Path(path)
    fd, size = await trio.to_thread.run_sync(_open_source, path)
    try:
        lock = await lock_shared(repo)
        try:
            root, count = await _import_fd(repo.blocks, fd, size, layout, progress, durable)
            if await trio.to_thread.run_sync(_fd_size, fd) != size:
                raise FileChanged(f"{path} changed size while it was being imported; add it again")
            hash_name, profile = layout_names(layout)
            pin = Pin(
                root,
                name=path.name if name is None else name,
                size=size,
                hash=hash_name,
                profile=profile,
                blocks=count,
                shared=shared,
            )
            await trio.to_thread.run_sync(repo.add_pin, pin)
        finally:
            lock.close()
    finally:
        os.close(fd)
    return ImportResult(root, size, count)


def _open_source(path: Path) -> tuple[int, int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except PermissionError:
        raise FileshareError(f"permission denied reading {path}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise FileshareError(f"{path} is {kind}; only regular files can be added")
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd, st.st_size


def _fd_size(fd: int) -> int:
    return os.fstat(fd).st_size


async def lock_shared(repo: Repo) -> RepoLock:
    """The repository lock in shared mode (so gc cannot run meanwhile), polling cancellably."""
    with trio.move_on_after(LOCK_TIMEOUT):
        while True:
            lock = repo.try_lock(exclusive=False)
            if lock is not None:
                return lock
            await trio.sleep(0.05)
    raise RepoBusy(f"repository {repo.path} is busy (a gc is running); retry later")


# (cid, block bytes, file bytes) of a leaf that a worker has stored
_Leaf = tuple[CID, int, int]


def _leaf_batch(
    store: Blockstore,
    builder: DagBuilder,
    fd: int,
    offset: int,
    length: int,
    buffer: bytearray,
    durable: bool,
) -> list[_Leaf]:
    """Worker thread: read ``length`` bytes at ``offset``, hash them into leaves, store them.

    Reads into a reused buffer (no fresh memory per chunk) and, for raw leaves, hashes and
    writes straight from it. blake3 runs single-threaded here: two workers each hashing their
    own chunk beat blake3's multithreading per 1 MiB chunk on 2 cores (bench/RESULTS.md).
    """
    layout = builder.layout
    view = memoryview(buffer)[:length]
    if os.preadv(fd, [view], offset) != length:
        raise FileChanged("the file shrank while it was being imported; add it again")
    leaves: list[_Leaf] = []
    blocks: list[tuple[CID, bytes | memoryview]] = []
    code = layout.hash_code
    prefix = encode_varint(code) + encode_varint(DIGEST_SIZES[code])
    for start in range(0, length, layout.chunk_size):
        chunk = view[start : start + layout.chunk_size]
        data: bytes | memoryview
        if layout.raw_leaves:
            digest = blake3.blake3(chunk).digest() if code == BLAKE3 else hash_digest(code, chunk)
            cid, data = CID(1, RAW, prefix + digest), chunk
        else:
            block = builder.leaf_block(bytes(chunk))
            cid, data = block.cid, block.data
        blocks.append((cid, data))
        leaves.append((cid, len(data), len(chunk)))
    store.put_many_sync(blocks, verified=True, sync=durable)
    return leaves


async def _import_fd(
    store: Blockstore,
    fd: int,
    size: int,
    layout: Layout,
    progress: Progress | None,
    durable: bool,
) -> tuple[CID, int]:
    builder = DagBuilder(layout)
    batch = max(1, BATCH_BYTES // layout.chunk_size) * layout.chunk_size
    n_batches = -(-size // batch)
    results: dict[int, list[_Leaf]] = {}
    done_events = [trio.Event() for _ in range(n_batches)]
    workers = min(WORKERS, n_batches)
    buffers = [bytearray(min(batch, size)) for _ in range(workers)]
    limiter = trio.CapacityLimiter(max(1, workers))
    ahead = trio.Semaphore(4 * max(1, workers))  # batches done but not yet consumed, bounded
    next_batch = 0
    count = 0
    pending: list[Block] = []  # inner nodes not yet written
    pending_bytes = 0

    async def worker(buffer: bytearray) -> None:
        nonlocal next_batch
        while next_batch < n_batches:
            await ahead.acquire()
            i = next_batch
            if i >= n_batches:
                ahead.release()
                return
            next_batch += 1
            offset = i * batch
            results[i] = await trio.to_thread.run_sync(
                _leaf_batch,
                store,
                builder,
                fd,
                offset,
                min(batch, size - offset),
                buffer,
                durable,
                limiter=limiter,
            )
            done_events[i].set()

    async def flush() -> None:
        nonlocal pending, pending_bytes
        if pending:
            blocks = [(b.cid, b.data) for b in pending]
            pending, pending_bytes = [], 0
            await store.put_many(blocks, verified=True, sync=durable)

    async with first_error(), trio.open_nursery() as nursery:
        for buffer in buffers:
            nursery.start_soon(worker, buffer)
        done = 0
        for i in range(n_batches):
            await done_events[i].wait()
            ahead.release()
            for cid, block_size, n in results.pop(i):
                for node in builder.add_leaf_ref(cid, block_size, n):
                    pending.append(node)
                    pending_bytes += len(node.data)
                    count += 1
                done += n
                count += 1
            if pending_bytes >= BATCH_BYTES:
                await flush()
            if progress is not None:
                progress(done, size)
    root, rest = builder.finish()
    pending += rest
    count += len(rest)
    await flush()
    return root, count


@contextlib.asynccontextmanager
async def first_error() -> AsyncIterator[None]:
    """Re-raise a nursery's exception group as its first real error (what a user can act on)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaf_errors(group))
        real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        raise (real or leaves)[0] from None


def _leaf_errors(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaf_errors(inner)
    else:
        yield exc


# --- export ---
def local_source(repo: Repo) -> GetBlock:
    """A ``GetBlock`` reading verified blocks from the local store."""

    async def get(cid: CID) -> bytes:
        return await repo.blocks.get(cid, verify=True)

    return get


class Prefetcher:
    """Wraps a ``GetBlock`` so a DAG walk fetches up to ``window`` blocks ahead, in walk order.

    When a dag-pb node arrives, its children are queued at the front (depth-first order, as the
    reader walks). Results wait in memory until asked for: at most ``window`` blocks. Errors of a
    prefetch surface when that block is asked for. Background tasks live in ``nursery``.
    """

    def __init__(self, nursery: trio.Nursery, source: GetBlock, window: int = PREFETCH) -> None:
        self._nursery = nursery
        self._source = source
        self._window = window
        self._queue: deque[CID] = deque()
        self._slots: dict[CID, _Slot] = {}

    async def get(self, cid: CID) -> bytes:
        slot = self._slots.get(cid)
        if slot is None:
            data = await self._source(cid)
        else:
            await slot.event.wait()
            del self._slots[cid]
            if slot.error is not None:
                raise slot.error
            data = slot.data
        if cid.codec == DAG_PB:
            with contextlib.suppress(FileshareError):  # the reader reports a malformed node
                self._queue.extendleft(reversed(child_cids(cid, data)))
        self._fill()
        return data

    def _fill(self) -> None:
        while self._queue and len(self._slots) < self._window:
            cid = self._queue.popleft()
            if cid not in self._slots:
                slot = self._slots[cid] = _Slot()
                self._nursery.start_soon(self._fetch, cid, slot)

    async def _fetch(self, cid: CID, slot: _Slot) -> None:
        try:
            slot.data = await self._source(cid)
        except Exception as exc:  # handed to whoever asks for this block
            slot.error = exc
        finally:
            slot.event.set()


@dataclass(slots=True)
class _Slot:
    event: trio.Event = field(default_factory=trio.Event)
    data: bytes = b""
    error: Exception | None = None


async def export_file(
    repo: Repo,
    cid: CID,
    out_path: Path | str,
    progress: Progress | None = None,
    *,
    source: GetBlock | None = None,
    fsync: bool = True,
) -> ExportResult:
    """Write the file at ``cid`` to ``out_path`` atomically, verifying every block on the way.

    ``source`` returns a block's verified bytes (default: the local store); it is called for up to
    ``PREFETCH`` blocks at once. Raises ``NotFound`` when a block is unavailable,
    ``VerificationError`` for a corrupt one, ``DecodeError`` for a malformed DAG, ``NoSpace`` when
    the disk is full. ``fsync`` flushes the file to disk before the rename.
    """
    get = source if source is not None else local_source(repo)
    out = Path(out_path)
    if await trio.Path(out).is_dir():
        raise FileshareError(f"{out} is a directory; give the path of the file to write")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.part"
    async with first_error(), trio.open_nursery() as nursery:
        prefetch = Prefetcher(nursery, get)
        size = await _write_file(cid, prefetch.get, tmp, out, progress, fsync)
        nursery.cancel_scope.cancel()
    return ExportResult(cid, size, out)


async def _write_file(
    cid: CID,
    get: GetBlock,
    tmp: Path,
    out: Path,
    progress: Progress | None,
    fsync: bool,
) -> int:
    total = 0

    async def get_noting_size(c: CID) -> bytes:
        nonlocal total
        data = await get(c)
        if c == cid:
            total = decode_block(c, data).filesize or 0
        return data

    fd, direct = await trio.to_thread.run_sync(_open_output, tmp, out)
    if direct:  # a device or pipe such as /dev/null: write to it, no rename
        tmp = out
    written = 0
    try:
        buffers: list[bytes] = []
        buffered = 0
        async for data in read_file(cid, get_noting_size):
            buffers.append(data)
            buffered += len(data)
            if buffered >= WRITE_BATCH:
                await trio.to_thread.run_sync(_writev, fd, buffers, out)
                written += buffered
                buffers, buffered = [], 0
                if progress is not None:
                    progress(written, total)
        if buffers:
            await trio.to_thread.run_sync(_writev, fd, buffers, out)
            written += buffered
        closing, fd = fd, -1  # _finish_tmp closes it, even on error
        if direct:
            os.close(closing)
        else:
            await trio.to_thread.run_sync(_finish_tmp, closing, tmp, out, fsync)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if not direct:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    if progress is not None:
        progress(written, total)
    return written


def _open_output(tmp: Path, out: Path) -> tuple[int, bool]:
    """(fd, direct): the temporary file, or ``out`` itself when it is a device, pipe or socket."""
    try:
        mode = os.stat(out).st_mode
    except OSError:
        mode = 0
    try:
        if mode and not stat.S_ISREG(mode):
            return os.open(out, os.O_WRONLY | os.O_CLOEXEC), True
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), False
    except FileNotFoundError:
        raise NotFound(f"directory {out.parent} does not exist") from None
    except PermissionError:
        raise FileshareError(f"permission denied writing in {out.parent}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left on device to write {out}") from exc
        raise


def _writev(fd: int, buffers: list[bytes], out: Path) -> None:
    try:
        views = [memoryview(b) for b in buffers]
        while views:
            n = os.writev(fd, views[:1024])  # IOV_MAX
            while n and views:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left on device to write {out}") from exc
        raise


def _finish_tmp(fd: int, tmp: Path, out: Path, fsync: bool) -> None:
    try:
        try:
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left on device to write {out}") from exc
        raise
