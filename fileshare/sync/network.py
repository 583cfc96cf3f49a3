"""Sync over the network: a ``SyncService`` runs one ``SyncFolder`` on a ``Node``.

Each folder has a gossipsub topic ``fileshare/sync/1/<folder id>``. A change is announced there as
a small *pointer* (``pointer``); the signed snapshot bytes are stored as a UnixFS file and served
by bitswap.

The topic validator accepts a pointer only from an allowed writer (the gossipsub StrictSign author)
and only when it decodes within its limits. Receiving: a pointer whose version vector the local
index already covers is skipped; else the snapshot bytes are fetched (bounded by the pointer's
size), checked (``accept_snapshot``) and applied with ``SyncFolder.receive_accepted``, whose
``ensure_blocks`` fetches a file's DAG bounded by the size the snapshot claims for it. When many
files are new and they fit on disk, the snapshot's whole DAG is fetched in one bitswap session
running alongside the apply, which writes each batch of files as soon as its blocks are in
(``BlocksReady``). Receives are serialised (one worker, the latest pointer per author kept while it
is busy).

Catch-up: every writer re-announces its current snapshot when a peer newly subscribes to the topic,
after a receive changed its index, and every ``SYNC_REPUBLISH_INTERVAL``. The folder's rendezvous
key (a hash of its id) is provided in the DHT and searched for, so folder peers find each other;
the snapshot file and directory roots are provided too.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from multiaddr import Multiaddr

from ..content.builder import Block
from ..content.cid import CID
from ..content.ingest import local_source
from ..content.layout import Layout
from ..content.reader import read_file
from ..errors import DecodeError, FileshareError, LimitExceeded
from ..fetch import FetchProgress, FetchResult, fetch_blocks, fetch_file
from ..identity.peerid import PeerId
from ..limits import (
    SYNC_BATCH_FETCH_MIN,
    SYNC_FETCH_OVERHEAD,
    SYNC_FETCH_STALL_TIMEOUT,
    SYNC_PEER_POLL_INTERVAL,
    SYNC_REPUBLISH_INTERVAL,
)
from ..net import addrs as _addrs
from ..protocols.pubsub.router import Delivered, Validation
from ..protocols.pubsub.rpc import Message
from ..repo import Pin, Repo
from .apply import InsufficientSpace, check_space
from .engine import ReceiveReport, SyncFolder, snapshot_file_blocks
from .folder import FolderConfig, folder_id_text
from .merge import plan_merge
from .pointer import Pointer, decode_pointer, encode_pointer
from .snapshot import Snapshot, SnapshotRejected, accept_snapshot_tree, decode_signed
from .version import Version
from .watcher import run_folder

if TYPE_CHECKING:
    from ..node import Node

__all__ = [
    "Pointer",
    "SyncService",
    "decode_pointer",
    "encode_pointer",
    "folder_topic",
    "pointer_validator",
    "publish_snapshot",
    "rendezvous_key",
]

log = logging.getLogger("fileshare.sync")

TOPIC_PREFIX = "fileshare/sync/1/"
_MAX_LISTED = 100  # paths listed per kind in one "received" event
_BULK_TICK = 0.02  # seconds between progress reports of a bulk fetch (applies wait on them)

Event = dict[str, Any]
OnEvent = Callable[[Event], None]


def folder_topic(folder: bytes) -> str:
    return TOPIC_PREFIX + folder_id_text(folder)


def rendezvous_key(folder: bytes) -> bytes:
    """The DHT key folder members provide: a sha2-256 multihash of the folder id."""
    return b"\x12\x20" + hashlib.sha256(b"fileshare-sync/1:" + folder).digest()


def _author(msg: Message) -> PeerId | None:
    try:
        return PeerId.from_bytes(msg.from_peer or b"")
    except (DecodeError, ValueError, TypeError):
        return None


def pointer_validator(
    config: FolderConfig, on_reject: Callable[[PeerId | None, str], None] | None = None
) -> Callable[[PeerId, Message], Validation]:
    """Topic validator: ACCEPT a well-formed pointer for this folder signed by an allowed writer."""

    def validate(_src: PeerId, msg: Message) -> Validation:
        author = _author(msg)
        why = ""
        if author is None or not config.may_write(author):
            why = "not an allowed writer of this folder"
        else:
            try:
                if decode_pointer(msg.data or b"").folder != config.folder:
                    why = "pointer for another folder"
            except DecodeError as exc:
                why = str(exc)
        if not why:
            return Validation.ACCEPT
        if on_reject is not None:
            on_reject(author, why)
        return Validation.REJECT

    return validate


async def publish_snapshot(
    node: Node, folder: FolderConfig, data: bytes, snap: Snapshot, layout: Layout
) -> tuple[Pointer, bytes]:
    """Store signed snapshot ``data`` as blocks (chunked with ``layout``) and publish its pointer
    on the folder topic; returns the pointer and its bytes. Also used by tests as a hostile writer.
    """
    cid, blocks = snapshot_file_blocks(data, layout)
    await node.repo.blocks.put_many(blocks, verified=True)
    node.bitswap.blocks_added([c for c, _ in blocks])
    assert snap.root is not None
    ptr = Pointer(folder.folder, cid, len(data), snap.root, snap.version, tuple(node.full_addrs()))
    raw = encode_pointer(ptr)
    await node.pubsub.publish(folder_topic(folder.folder), raw)
    return ptr, raw


class SyncService:
    """Keeps ``folder`` in sync with the folder's other members reachable from ``node``.

    ``on_event`` receives one dict per thing worth telling a user (``event`` names what: ready,
    published, received, rejected, error, readonly).
    """

    def __init__(
        self,
        node: Node,
        folder: SyncFolder,
        *,
        on_event: OnEvent | None = None,
        debounce_ms: int | None = None,
        rescan_interval: float | None = None,
        republish_interval: float = SYNC_REPUBLISH_INTERVAL,
        stall_timeout: float = SYNC_FETCH_STALL_TIMEOUT,
        on_fetch_progress: Callable[[FetchProgress], None] | None = None,
    ) -> None:
        self.node = node
        self.folder = folder
        self.on_fetch_progress = on_fetch_progress  # every block fetch's progress (a UI's bar)
        self.config = folder.config
        self.topic = folder_topic(self.config.folder)
        self.writer = self.config.may_write(node.peer_id)
        self.on_event = on_event or (lambda _e: None)
        self.debounce_ms = debounce_ms
        self.rescan_interval = rescan_interval
        self.republish_interval = republish_interval
        self.stall_timeout = stall_timeout
        self.ready = trio.Event()
        self._pending: dict[PeerId, Pointer] = {}
        self._wake = trio.Event()
        self._announce_lock = trio.Lock()
        self._last: tuple[Version, bytes, Pointer] | None = None  # index version, pointer bytes
        self._rejected: set[CID] = set()
        self._reject_reported: dict[PeerId | None, float] = {}
        self._provided: list[CID] = []
        self.stats = {"received": 0, "published": 0, "rejected": 0, "file_bytes_fetched": 0}

    # --- running ---
    async def run(self) -> None:
        """Run until cancelled; ``ready`` is set after the initial scan and announcement."""
        self.node.pubsub.set_validator(
            self.topic, pointer_validator(self.config, self._rejected_msg)
        )
        messages = self.node.pubsub.subscribe(self.topic)
        self.node.kad.start_providing(rendezvous_key(self.config.folder))
        kwargs: dict[str, Any] = {}
        if self.debounce_ms is not None:
            kwargs["debounce_ms"] = self.debounce_ms
        if self.rescan_interval is not None:
            kwargs["rescan_interval"] = self.rescan_interval
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._worker)
            nursery.start_soon(self._listen, messages)
            scanned = trio.Event()
            nursery.start_soon(
                lambda: run_folder(self.folder, self._on_snapshot, ready=scanned, **kwargs)
            )
            await scanned.wait()
            await self.announce()
            nursery.start_soon(self._watch_peers)
            nursery.start_soon(self._discover)
            self.ready.set()
            files = self._live_files()
            self._emit("ready", folder=self.config.id_text, writer=self.writer, files=files)

    def _live_files(self) -> int:
        return sum(1 for e in self.folder.index.entries if not e.deleted)

    async def _listen(self, messages: trio.MemoryReceiveChannel[Delivered]) -> None:
        async for delivered in messages:
            try:
                ptr = decode_pointer(delivered.data)
            except DecodeError as exc:  # the validator checked already
                log.warning("pointer from %s: %s", delivered.author, exc)
                continue
            self._pending.pop(delivered.author, None)
            self._pending[delivered.author] = ptr  # the latest per author, in arrival order
            self._wake.set()

    async def _watch_peers(self) -> None:
        """Re-announce when a peer newly subscribes (it may have missed changes) and periodically."""
        known: set[PeerId] = set()
        next_periodic = trio.current_time() + self.republish_interval
        while True:
            await trio.sleep(SYNC_PEER_POLL_INTERVAL)
            peers = set(self.node.pubsub.topic_peers(self.topic))
            now = trio.current_time()
            if peers - known or now >= next_periodic:
                next_periodic = now + self.republish_interval
                await self.announce(again=True)
            known = peers

    async def _discover(self) -> None:
        """Find folder members through the DHT rendezvous key and connect to them."""
        key = rendezvous_key(self.config.folder)
        while True:
            with trio.move_on_after(30):
                async for peer, addrs in self.node.kad.find_providers(key):
                    if peer != self.node.peer_id and addrs and not self._connected(peer):
                        self.node.nursery.start_soon(self._dial, peer, addrs)
            await trio.sleep(60)

    def _connected(self, peer: PeerId) -> bool:
        return any(c.remote_peer == peer for c in self.node.host.connections)

    async def _dial(self, peer: PeerId, addrs: list[Multiaddr]) -> None:
        with trio.move_on_after(15):
            try:
                await self.node.host.dial(peer, addrs)
            except FileshareError as exc:
                log.info("could not dial folder peer %s: %s", peer, exc)

    # --- announcing ---
    async def _on_snapshot(self, data: bytes, snap: Snapshot) -> None:
        async with self._announce_lock:
            await self._publish(data, snap)

    async def announce(self, *, again: bool = False) -> None:
        """Announce the current snapshot (a fresh one if the index changed since the last)."""
        if not self.writer:
            return
        async with self._announce_lock:
            if self._last is not None and self._last[0] == self.folder.index.version:
                if again:
                    await self.node.pubsub.publish(self.topic, self._last[1])
                return
            data, snap = await self.folder.publish()
            await self._publish(data, snap)

    async def _publish(self, data: bytes, snap: Snapshot) -> None:
        if not self.writer:
            note = "this node may not write to the folder; change not shared"
            self._emit("readonly", version=_version_json(snap.version), note=note)
            return
        ptr, raw = await publish_snapshot(self.node, self.config, data, snap, self.folder.layout)
        self._last = (snap.version, raw, ptr)
        await trio.to_thread.run_sync(self._pin, ptr)
        self._provide(ptr)
        self.stats["published"] += 1
        files = sum(1 for e in snap.entries if not e.deleted)
        self._emit("published", snapshot=str(ptr.snapshot), root=str(ptr.root), size=ptr.size,
                   files=files, version=_version_json(snap.version))  # fmt: skip

    def _pin(self, ptr: Pointer) -> None:
        name = "sync-snapshot:" + self.config.id_text
        self.node.repo.replace_named_pin(Pin(ptr.snapshot, name=name, shared=True))

    def _provide(self, ptr: Pointer) -> None:
        for old in self._provided:
            self.node.kad.stop_providing(old)
        self._provided = [ptr.snapshot, ptr.root]
        for cid in self._provided:
            self.node.kad.start_providing(cid)

    # --- receiving ---
    def _rejected_msg(self, author: PeerId | None, why: str) -> None:
        self.stats["rejected"] += 1
        now = time.monotonic()
        if now - self._reject_reported.get(author, -1e9) >= 10:
            self._reject_reported[author] = now
            self._emit("rejected", **{"from": str(author) if author else None},
                       reason=f"pointer: {why}")  # fmt: skip

    def _emit(self, event: str, **fields: Any) -> None:
        self.on_event({"event": event, **fields})

    def _reject(self, author: PeerId, ptr: Pointer, exc: Exception) -> None:
        self._rejected.add(ptr.snapshot)
        self.stats["rejected"] += 1
        self._emit("rejected", **{"from": str(author)}, snapshot=str(ptr.snapshot), reason=str(exc))

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending:
                author = next(iter(self._pending))
                ptr = self._pending.pop(author)
                try:
                    await self._receive(author, ptr)
                except (FileshareError, OSError) as exc:
                    log.debug("receive failed", exc_info=True)
                    self._emit("error", **{"from": str(author)}, snapshot=str(ptr.snapshot),
                               error=str(exc))  # fmt: skip

    async def _receive(self, author: PeerId, ptr: Pointer) -> None:
        if ptr.snapshot in self._rejected or self.folder.index.version.dominates(ptr.version):
            return
        started = time.monotonic()
        peers = [a for a in ptr.addrs if _addrs.split_peer(a)[1] == author]
        got = await self._fetch(ptr.snapshot, ptr.size + SYNC_FETCH_OVERHEAD, peers)
        data = await self._read(ptr.snapshot, ptr.size)
        fetched_at = time.monotonic()
        try:
            signed = decode_signed(data)
            snap, dirs = accept_snapshot_tree(signed, self.config.folder, self.config.writers)
        except (DecodeError, SnapshotRejected) as exc:
            self._reject(author, ptr, exc)
            return
        phases = {"snapshot": time.monotonic() - started, "check": time.monotonic() - fetched_at}
        fetched = _Tally()
        claims: dict[CID, int] = {}
        for e in snap.entries:
            if e.cid is not None:
                claims[e.cid] = max(claims.get(e.cid, 0), e.size, e.tsize)

        async def ensure_blocks(root: CID) -> None:
            limit = claims.get(root, 0) + SYNC_FETCH_OVERHEAD
            fetched.add(await self._fetch(root, limit, peers))

        async def fetch_to(root: CID, out: Path) -> None:
            limit = claims.get(root, 0) + SYNC_FETCH_OVERHEAD
            fetched.add(await self._fetch(root, limit, peers, out=out))

        before = self.folder.index.version
        report: ReceiveReport | None = None
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            bulk = await self._bulk_fetch(snap, dirs, claims, peers, fetched)
            if bulk is not None:
                nursery.start_soon(bulk.run)
            ready = bulk.wait if bulk is not None else None
            try:
                report = await self.folder.receive_accepted(snap, ensure_blocks, ready, fetch_to)
            except (FileshareError, OSError) as exc:  # raised again below, outside the nursery
                failure = exc
            nursery.cancel_scope.cancel()  # a bulk fetch the plan no longer needed
        if bulk is not None and bulk.finished is not None:
            phases["bulk_fetch"] = bulk.finished - started - phases["snapshot"]
        if isinstance(failure, (DecodeError, SnapshotRejected, InsufficientSpace)):
            self._reject(author, ptr, failure)
            return
        if failure is not None:
            raise failure
        assert report is not None
        self.stats["received"] += 1
        self.stats["file_bytes_fetched"] += fetched.bytes
        seconds = time.monotonic() - started
        phases["files"] = seconds - phases["snapshot"]
        self.on_event(_received_event(author, snap, report, got, fetched, seconds, phases))
        if self.folder.index.version != before:
            await self.announce()  # our index changed: members that missed it catch up from us

    async def _bulk_fetch(
        self,
        snap: Snapshot,
        dirs: list[Block],
        claims: dict[CID, int],
        peers: Sequence[Multiaddr],
        tally: _Tally,
    ) -> _BulkFetch | None:
        """Many files to fetch: their whole DAG in one bitswap session, run alongside the apply.

        Only when the files claimed fit on disk (the apply checks again, exactly, before writing).
        """
        plan = plan_merge(
            self.folder.index,
            snap,
            self.node.peer_id,
            writers=self.config.writers,
            ignored=self.folder.scanner.ignore.matches,
        )
        needed = {f.entry.cid for f in plan.fetches if f.source is None}
        if len(needed) < SYNC_BATCH_FETCH_MIN or snap.root is None:
            return None
        store_bytes = sum(claims[c] for c in needed if c is not None)
        try:
            await trio.to_thread.run_sync(
                check_space, self.folder.root, self.node.repo, plan.claimed_bytes(), store_bytes
            )
        except InsufficientSpace:
            return None  # the apply refuses the snapshot, before fetching anything
        # the directory blocks accept_snapshot_tree built and checked against the root
        await self.node.repo.blocks.put_many([(b.cid, b.data) for b in dirs], verified=True)
        limit = sum(claims.values()) + SYNC_FETCH_OVERHEAD
        return _BulkFetch(self, snap.root, limit, peers, tally)

    async def _fetch(
        self,
        root: CID,
        limit: int,
        peers: Sequence[Multiaddr],
        on_progress: Callable[[], None] | None = None,
        out: Path | None = None,
    ) -> FetchResult:
        """``fetch_blocks`` of ``root`` (``fetch_file`` to ``out``, unpinned, if given), stopped
        with ``LimitExceeded`` past ``limit`` bytes."""
        over = False

        def check(p: FetchProgress) -> None:
            nonlocal over
            if p.bytes_done > limit or (p.file_size is not None and p.file_size > limit):
                over = True
                scope.cancel()
                return
            if on_progress is not None:
                on_progress()
            if self.on_fetch_progress is not None:
                self.on_fetch_progress(p)

        interval = 0.1 if on_progress is None else _BULK_TICK
        with trio.CancelScope() as scope:
            if out is not None:
                return await fetch_file(
                    self.node,
                    root,
                    out,
                    peers=peers,
                    on_progress=check,
                    progress_interval=interval,
                    stall_timeout=self.stall_timeout,
                    pin=False,
                )
            return await fetch_blocks(
                self.node,
                root,
                peers=peers,
                on_progress=check,
                progress_interval=interval,
                stall_timeout=self.stall_timeout,
            )
        assert over
        raise LimitExceeded(f"{root}: the DAG is larger than the {limit} bytes claimed for it")

    async def _read(self, cid: CID, size: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        async for chunk in read_file(cid, local_source(self.node.repo)):
            total += len(chunk)
            if total > size:
                raise LimitExceeded(f"snapshot {cid} is larger than its pointer says")
            parts.append(chunk)
        if total != size:
            raise FileshareError(f"snapshot {cid} has {total} bytes, its pointer says {size}")
        return b"".join(parts)


class _BulkFetch:
    """A snapshot's whole DAG fetched in the background; ``wait`` is the apply's ``BlocksReady``."""

    def __init__(
        self,
        service: SyncService,
        root: CID,
        limit: int,
        peers: Sequence[Multiaddr],
        tally: _Tally,
    ) -> None:
        self.service = service
        self.root = root
        self.limit = limit
        self.peers = peers
        self.tally = tally
        self.error: Exception | None = None
        self.finished: float | None = None  # time.monotonic() when it ended
        self._tick = trio.Event()  # set (and replaced) at each progress report and at the end

    async def run(self) -> None:
        try:
            result = await self.service._fetch(self.root, self.limit, self.peers, self._progress)
            self.tally.add(result)
        except (FileshareError, OSError) as exc:  # handed to the apply by ``wait``
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self._tick.set()

    def _progress(self) -> None:
        self._tick.set()
        self._tick = trio.Event()

    async def wait(self, roots: Sequence[CID]) -> None:
        """Until the DAGs under ``roots`` are local or the fetch ended; raises its error."""
        repo = self.service.node.repo
        while True:
            if self.error is not None:
                raise self.error
            if self.finished is not None:
                return
            tick = self._tick
            if await trio.to_thread.run_sync(_all_local, repo, roots):
                return
            await tick.wait()


def _all_local(repo: Repo, roots: Sequence[CID]) -> bool:
    """Whether every DAG under ``roots`` is in the store (the last root, likely the last to
    arrive, checked first). Blocking."""
    return all(repo.dag_status([cid]).complete for cid in (roots[-1], *roots[:-1]))


class _Tally:
    def __init__(self) -> None:
        self.bytes = 0
        self.blocks = 0

    def add(self, r: FetchResult) -> None:
        self.bytes += r.bytes_fetched
        self.blocks += r.blocks_fetched


def _version_json(v: Version) -> dict[str, int]:
    return {str(p): n for p, n in v.counters}


def _received_event(
    author: PeerId,
    snap: Snapshot,
    report: ReceiveReport,
    got: FetchResult,
    fetched: _Tally,
    seconds: float,
    phases: dict[str, float],
) -> Event:
    a = report.applied
    return {
        "event": "received",
        "from": str(author),
        "author": str(snap.author),
        "version": _version_json(snap.version),
        "written": a.written[:_MAX_LISTED],
        "renamed": [list(r) for r in a.renamed[:_MAX_LISTED]],
        "trashed": a.trashed[:_MAX_LISTED],
        "conflicts": [c.conflict_path for c in report.plan.conflicts][:_MAX_LISTED],
        "skipped": dict(list(a.skipped.items())[:_MAX_LISTED]),
        "counts": {
            "written": len(a.written),
            "renamed": len(a.renamed),
            "trashed": len(a.trashed),
            "skipped": len(a.skipped),
        },
        "snapshot_bytes_fetched": got.bytes_fetched,
        "file_bytes_fetched": fetched.bytes,
        "file_blocks_fetched": fetched.blocks,
        "seconds": round(seconds, 3),
        # seconds: snapshot (fetched and checked; check: the decode and checks), files (fetched
        # and applied), bulk_fetch (the whole-DAG fetch, part of files)
        "phases": {k: round(v, 3) for k, v in phases.items()},
    }
