"""Fetch orchestration: providers -> a bitswap session -> every block in the store -> the file.

1. If the whole DAG is already in the store, nothing touches the network.
2. Providers: the peers given (dialled), the peers already connected, and ``find_providers``
   (the DHT); more are looked for while the session says it needs them, and
   peers that connect meanwhile are probed too.
3. The session fetches what is missing (blocks already in the store are never fetched again, so
   a fetch killed at any point resumes where it stopped) and writes each verified block.
4. ``fetch_file`` writes the file to a temporary file next to the destination and renames it;
   the root is pinned so ``gc`` keeps what was fetched. The file's bytes are written at their
   offsets as the verified blocks arrive (the offsets come from the verified parent nodes, each
   leaf's size is checked against its parent's blocksize). When that does not cover the whole
   file (some blocks were already local, a subtree is used twice, the output is not a regular
   file), ``export_file`` writes it from the store instead, verifying every block again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from multiaddr import Multiaddr

from .content.blockstore import NoSpace
from .content.cid import CID, hash_name_of
from .content.ingest import export_file, first_error, lock_shared
from .content.reader import decode_block
from .content.tree import export_tree, is_directory
from .errors import FileshareError, NotFound
from .identity.peerid import PeerId
from .limits import DIAL_TIMEOUT
from .protocols.bitswap.client import FetchSession, FileOutput
from .protocols.bitswap.session_types import SessionConfig
from .repo import Pin, Repo

if TYPE_CHECKING:
    from .node import Node

__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "FetchProgress",
    "FetchResult",
    "Provider",
    "fetch_blocks",
    "fetch_file",
    "find_providers",
]

log = logging.getLogger("fileshare.fetch")

DEFAULT_STALL_TIMEOUT = 60.0  # seconds without a new block before a fetch gives up
REDISCOVER_INTERVAL = 5.0  # seconds between provider searches while the session needs peers
_RATE_WINDOW = 3.0  # seconds of history behind the reported rate

Provider = tuple[PeerId, list[Multiaddr]]


@dataclass(frozen=True, slots=True)
class FetchProgress:
    elapsed: float
    blocks_done: int  # fetched + found locally
    blocks_known: int  # discovered so far
    bytes_done: int
    blocks_fetched: int
    bytes_fetched: int
    blocks_local: int
    bytes_local: int
    file_size: int | None
    file_bytes_done: int
    rate: float  # fetched bytes per second, over the last few seconds
    eta: float | None  # seconds
    peers: int  # providers sending us blocks
    in_flight: int
    duplicate_bytes: int
    bad_blocks: int

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["elapsed"] = round(self.elapsed, 3)
        data["rate"] = round(self.rate)
        data["eta"] = None if self.eta is None else round(self.eta, 1)
        return data


@dataclass(frozen=True, slots=True)
class FetchResult:
    root: CID
    path: Path | None  # None: blocks only (``fetch_blocks``)
    size: int
    seconds: float  # getting the blocks into the store (the export to the file not included)
    network: bool  # False when everything was already in the store
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    blocks_local: int = 0
    bytes_local: int = 0
    duplicate_bytes: int = 0
    endgame_duplicate_bytes: int = 0
    bad_blocks: int = 0
    peers: dict[str, int] = field(default_factory=dict)  # PeerId -> block bytes received
    dropped: dict[str, str] = field(default_factory=dict)  # PeerId -> why it was dropped

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["root"] = str(self.root)
        data["path"] = None if self.path is None else str(self.path)
        data["seconds"] = round(self.seconds, 3)
        return data


ProgressCallback = Callable[[FetchProgress], None]


async def find_providers(node: Node, cid: CID) -> AsyncIterator[Provider]:
    """Providers of ``cid`` from content routing: the DHT (GET_PROVIDERS for its multihash)."""
    async with aclosing(node.kad.find_providers(cid)) as found:
        async for provider in found:
            yield provider


class _Rate:
    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, total: int) -> float:
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= _RATE_WINDOW:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        return (total - b0) / (now - t0) if now > t0 else 0.0


def _progress(fetch: FetchSession, started: float, rate: _Rate) -> FetchProgress:
    p = fetch.session.progress()
    now = trio.current_time()
    fetched = p.bytes_done - p.bytes_local
    bps = rate.update(now, fetched)
    eta: float | None = None
    if p.file_size is not None and bps > 0:
        eta = max(0.0, (p.file_size - p.file_bytes_done) / bps)
    return FetchProgress(
        elapsed=now - started,
        blocks_done=p.blocks_done,
        blocks_known=p.blocks_known,
        bytes_done=p.bytes_done,
        blocks_fetched=p.blocks_done - p.blocks_local,
        bytes_fetched=fetched,
        blocks_local=p.blocks_local,
        bytes_local=p.bytes_local,
        file_size=p.file_size,
        file_bytes_done=p.file_bytes_done,
        rate=bps,
        eta=eta,
        peers=p.peers_active,
        in_flight=p.in_flight,
        duplicate_bytes=p.duplicate_bytes + p.endgame_duplicate_bytes,
        bad_blocks=p.bad_blocks,
    )


async def _dial(node: Node, addr: Multiaddr) -> PeerId | None:
    try:
        with trio.fail_after(DIAL_TIMEOUT + 1):
            conn = await node.host.dial(addr)
    except (FileshareError, trio.TooSlowError) as exc:
        log.warning("could not connect to provider %s: %s", addr, exc or "timed out")
        return None
    return conn.remote_peer


async def _add_providers(
    node: Node, fetch: FetchSession, peers: Sequence[Multiaddr], *, search: bool
) -> list[str]:
    """Add the given peers, the connected ones and (``search``) routing results; returns errors."""
    errors: list[str] = []

    async def given(addr: Multiaddr) -> None:
        peer = await _dial(node, addr)
        if peer is None:
            errors.append(f"cannot connect to {addr}")
        elif not await fetch.add_peer(peer, has_blocks=True):
            errors.append(f"{addr} does not speak bitswap")

    async def found(peer: PeerId, addrs: list[Multiaddr]) -> None:
        if peer == node.peer_id or fetch.has_peer(peer):
            return
        try:
            with trio.fail_after(DIAL_TIMEOUT + 1):
                await node.host.dial(peer, addrs)
        except (FileshareError, trio.TooSlowError) as exc:
            log.info("could not connect to provider %s: %s", peer, exc or "timed out")
            return
        await fetch.add_peer(peer, has_blocks=True)

    async with trio.open_nursery() as nursery:
        for addr in peers:
            nursery.start_soon(given, addr)
        for conn in node.host.connections:
            if not fetch.has_peer(conn.remote_peer):
                nursery.start_soon(lambda p=conn.remote_peer: fetch.add_peer(p, has_blocks=False))
        if search:
            async for peer, addrs in find_providers(node, fetch.root):
                nursery.start_soon(found, peer, addrs)
    return errors


async def fetch_blocks(
    node: Node,
    root: CID,
    *,
    peers: Sequence[Multiaddr] = (),
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 0.5,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    config: SessionConfig | None = None,
) -> FetchResult:
    """Get every block of the DAG under ``root`` into the node's store (see module docstring)."""
    result, _ = await _fetch_blocks(
        node,
        root,
        peers=peers,
        on_progress=on_progress,
        progress_interval=progress_interval,
        stall_timeout=stall_timeout,
        config=config,
        output=None,
    )
    return result


async def _fetch_blocks(
    node: Node,
    root: CID,
    *,
    peers: Sequence[Multiaddr],
    on_progress: ProgressCallback | None,
    progress_interval: float,
    stall_timeout: float,
    config: SessionConfig | None,
    output: FileOutput | None,
) -> tuple[FetchResult, bool]:
    """``fetch_blocks``, also writing the file's bytes into ``output``; True when those cover
    the whole file."""
    started = trio.current_time()
    wall = time.monotonic()
    repo = node.repo
    status = await trio.to_thread.run_sync(repo.dag_status, [root])
    if status.complete:
        return FetchResult(root, None, 0, time.monotonic() - wall, network=False), False
    lock = await lock_shared(repo)
    try:
        async with (
            node.bitswap.session(root, config, output=output) as fetch,
            first_error(),
            trio.open_nursery() as nursery,
        ):
            errors = await _add_providers(node, fetch, peers, search=True)
            if not fetch.peers and not fetch.complete:
                await fetch.pump()  # resume may find everything local after all
            if not fetch.peers and not fetch.dropped and not fetch.complete:
                why = "; ".join(errors) if errors else "give one with --peer MULTIADDR"
                first = status.missing[0] if status.missing else root
                raise NotFound(
                    f"block {first} of {root} is not in the local store and no provider is "
                    f"reachable ({why})"
                )
            rate = _Rate()
            next_search = trio.current_time() + REDISCOVER_INTERVAL
            searching = False

            async def search() -> None:
                nonlocal searching
                try:
                    await _add_providers(node, fetch, (), search=True)
                finally:
                    searching = False

            async def tick() -> None:
                nonlocal next_search, searching
                if on_progress is not None:
                    on_progress(_progress(fetch, started, rate))
                now = trio.current_time()
                if fetch.session.needs_peers and not searching and now >= next_search:
                    searching = True
                    next_search = now + REDISCOVER_INTERVAL
                    nursery.start_soon(search)

            await fetch.run(
                stall_timeout=stall_timeout, on_tick=tick, tick_interval=progress_interval
            )
            final = _progress(fetch, started, rate)
            if on_progress is not None:
                on_progress(final)
            stats = fetch.session.peer_stats()
            nursery.cancel_scope.cancel()
        p = fetch.session.progress()
        streamed = (
            output is not None
            and fetch.session.parts_complete
            and output.written == fetch.session.parts_bytes
        )
    finally:
        lock.close()
    return FetchResult(
        root,
        None,
        0,
        time.monotonic() - wall,
        network=True,
        blocks_fetched=final.blocks_fetched,
        bytes_fetched=final.bytes_fetched,
        blocks_local=p.blocks_local,
        bytes_local=p.bytes_local,
        duplicate_bytes=p.duplicate_bytes,
        endgame_duplicate_bytes=p.endgame_duplicate_bytes,
        bad_blocks=p.bad_blocks,
        peers={str(k): s.bytes_received for k, s in stats.items() if s.bytes_received}
        | {str(k): 0 for k in fetch.dropped},
        dropped={str(k): v for k, v in fetch.dropped.items()},
    ), streamed


async def fetch_file(
    node: Node,
    root: CID,
    out: Path,
    *,
    peers: Sequence[Multiaddr] = (),
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 0.5,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    config: SessionConfig | None = None,
    pin: bool = True,
) -> FetchResult:
    """Fetch the file at ``root`` and write it to ``out`` (temporary file + rename); a directory
    (plain or sharded) is written as a new directory tree at ``out`` (see ``export_tree``).

    Returns once the whole file or tree is written and verified. A network fetch pins ``root`` (named
    after ``out``) when ``pin``; a file already complete in the store is just written out.
    """
    if await trio.Path(out).is_dir():
        raise FileshareError(
            f"{out} is an existing directory; give the path of the file to write "
            "(for a directory CID, a path that does not exist yet)"
        )
    if not await trio.Path(out.parent if str(out.parent) else ".").is_dir():
        raise NotFound(f"directory {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.part"
    fd = await trio.to_thread.run_sync(_open_stream_output, out)
    output = FileOutput(fd, str(out)) if fd is not None else None
    try:
        result, streamed = await _fetch_blocks(
            node,
            root,
            peers=peers,
            on_progress=on_progress,
            progress_interval=progress_interval,
            stall_timeout=stall_timeout,
            config=config,
            output=output,
        )
        if output is not None:
            closing, output.fd = output.fd, -1
            streamed = await trio.to_thread.run_sync(_finish_output, closing, tmp, out, streamed)
    finally:
        if output is not None and output.fd >= 0:
            os.close(output.fd)
    if streamed:
        size = output.written if output is not None else 0
    elif await is_directory(node.repo, root):  # the whole tree is local now: write it out
        size = (await export_tree(node.repo, root, out)).size
    else:
        log.debug("writing %s from the store (the fetched blocks did not cover the file)", out)
        size = (await export_file(node.repo, root, out)).size
    if result.network and pin:
        await trio.to_thread.run_sync(_pin, node.repo, root, out.name, result.blocks_fetched
                                      + result.blocks_local)  # fmt: skip
    return replace(result, path=out, size=size)


def _open_stream_output(out: Path) -> int | None:
    """An unnamed file (``O_TMPFILE``: nothing is left behind if we are killed) in ``out``'s
    directory for the fetched bytes, or None: ``out`` is not a regular file (a device or pipe:
    ``export_file`` writes it in order), or the file system or OS has no ``O_TMPFILE``."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        mode = os.stat(out).st_mode
    except OSError:
        mode = 0
    if mode and not stat.S_ISREG(mode):
        return None
    try:
        return os.open(out.parent, os.O_WRONLY | flag | os.O_CLOEXEC, 0o644)
    except OSError:
        return None  # export_file reports what is wrong with the destination


def _finish_output(fd: int, tmp: Path, out: Path, streamed: bool) -> bool:
    """Worker thread: a complete streamed file is fsynced, named ``tmp`` and renamed to ``out``;
    False if it was not (``export_file`` writes the file then)."""
    try:
        try:
            if streamed:
                os.fsync(fd)
                _link_fd(fd, tmp)
        finally:
            os.close(fd)
        if streamed:
            os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left on device to write {out}") from exc
        log.info("could not name the fetched file %s (%s): exporting it from the store", out, exc)
        return False
    return streamed


def _link_fd(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (``linkat`` following /proc/self/fd)."""
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # a dir fd makes os.link use linkat(), which follows the /proc symlink to the open file
        os.link(f"/proc/self/fd/{fd}", os.path.abspath(path), src_dir_fd=root)
    finally:
        os.close(root)


def _pin(repo: Repo, root: CID, name: str, blocks: int) -> None:
    old = repo.get_pin(root)
    if old is not None:
        return
    node = decode_block(root, repo.blocks.get_sync(root))
    hash_name = hash_name_of(root.hash_code)
    repo.add_pin(Pin(root, name=name, size=node.filesize or 0, hash=hash_name, blocks=blocks))
