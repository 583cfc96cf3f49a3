"""Sync over the network: a ``SyncService`` runs one ``SyncFolder`` on a ``Node``.

Each folder has a gossipsub topic ``fileshare/sync/1/<folder id>``. A change is announced there as
a small *pointer* (a full snapshot can exceed the pubsub message limit); the signed snapshot bytes
are stored as a UnixFS file and served by bitswap::

    message Pointer {
      uint32 format = 1;              // 1
      bytes folder = 2;               // folder id
      bytes snapshot = 3;             // CID of the signed snapshot bytes (a UnixFS file)
      uint64 size = 4;                // length of the signed snapshot bytes
      bytes root = 5;                 // CID of the snapshot's UnixFS directory
      repeated Counter version = 6;   // the folder version vector of the snapshot
      repeated string addrs = 7;      // the announcer's full multiaddrs
    }

The topic validator accepts a pointer only from an allowed writer (the gossipsub StrictSign author)
and only when it decodes within its limits. Receiving: a pointer whose version vector the local
index already covers is skipped; else the snapshot bytes are fetched (bounded by the pointer's
size), checked (``accept_snapshot``) and applied with ``SyncFolder.receive``, whose
``ensure_blocks`` fetches a file's DAG bounded by the size the snapshot claims for it. Receives are
serialised (one worker, the latest pointer per author kept while it is busy).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from multiaddr import Multiaddr

from ..content.cid import CID
from ..content.ingest import local_source
from ..content.layout import Layout
from ..content.reader import read_file
from ..errors import DecodeError, FileshareError, LimitExceeded
from ..fetch import FetchProgress, FetchResult, fetch_blocks
from ..identity.peerid import PeerId
from ..limits import (
    ANNOUNCE_MAX_ADDR_LENGTH,
    SYNC_BATCH_FETCH_MIN,
    SYNC_FETCH_OVERHEAD,
    SYNC_FETCH_STALL_TIMEOUT,
    SYNC_MAX_INVITE_ADDRS,
    SYNC_MAX_POINTER_BYTES,
    SYNC_MAX_SNAPSHOT_BYTES,
    SYNC_PEER_POLL_INTERVAL,
    SYNC_REPUBLISH_INTERVAL,
)
from ..net import addrs as _addrs
from ..protocols.pubsub.router import Delivered, Validation
from ..protocols.pubsub.rpc import Message
from ..repo import Pin
from ..wire.protobuf import LEN, VARINT, FieldValue, Writer, iter_fields
from .apply import InsufficientSpace
from .engine import ReceiveReport, SyncFolder, snapshot_file_blocks
from .folder import FolderConfig, folder_id_text
from .merge import plan_merge
from .snapshot import (
    MAX_FOLDER_ID_BYTES,
    Snapshot,
    SnapshotRejected,
    _counters,
    _decode_version,
    accept_snapshot,
    build_tree,
    decode_signed,
)
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

POINTER_FORMAT = 1
TOPIC_PREFIX = "fileshare/sync/1/"
_SIGNED_SLACK = 4096  # bytes of envelope around the snapshot body (key + signature)
_MAX_CID_BYTES = 128
_MAX_LISTED = 100  # paths listed per kind in one "received" event

Event = dict[str, Any]
OnEvent = Callable[[Event], None]


def folder_topic(folder: bytes) -> str:
    return TOPIC_PREFIX + folder_id_text(folder)


def rendezvous_key(folder: bytes) -> bytes:
    """The DHT key folder members provide: a sha2-256 multihash of the folder id."""
    return b"\x12\x20" + hashlib.sha256(b"fileshare-sync/1:" + folder).digest()


# --- pointer codec ---
@dataclass(frozen=True, slots=True)
class Pointer:
    folder: bytes
    snapshot: CID
    size: int
    root: CID
    version: Version
    addrs: tuple[Multiaddr, ...] = ()


def encode_pointer(p: Pointer) -> bytes:
    w = Writer().uint(1, POINTER_FORMAT).bytes(2, p.folder).bytes(3, p.snapshot.encode())
    w.uint(4, p.size).bytes(5, p.root.encode())
    _counters(w, 6, p.version)
    for a in p.addrs[:SYNC_MAX_INVITE_ADDRS]:
        w.string(7, str(a))
    data = w.finish()
    if len(data) > SYNC_MAX_POINTER_BYTES:
        raise LimitExceeded(f"pointer exceeds {SYNC_MAX_POINTER_BYTES} bytes")
    return data


def _field_bytes(wire: int, value: FieldValue, what: str, limit: int) -> bytes:
    if wire != LEN or isinstance(value, int):
        raise DecodeError(f"pointer: {what} must be length-delimited")
    if len(value) > limit:
        raise DecodeError(f"pointer: {what} too long")
    return bytes(value)


def decode_pointer(data: bytes | bytearray | memoryview) -> Pointer:
    """Parse and check a pointer; raises only ``DecodeError``."""
    if len(data) > SYNC_MAX_POINTER_BYTES:
        raise DecodeError(f"pointer exceeds {SYNC_MAX_POINTER_BYTES} bytes")
    fmt, size = 0, -1
    folder: bytes | None = None
    snapshot: CID | None = None
    root: CID | None = None
    counters: list[bytes] = []
    addrs: list[Multiaddr] = []
    for fnum, wire, value in iter_fields(data):
        if fnum in (1, 4):
            if wire != VARINT or not isinstance(value, int):
                raise DecodeError(f"pointer: field {fnum} must be a varint")
            if fnum == 1:
                fmt = value
            else:
                size = value
        elif fnum == 2:
            folder = _field_bytes(wire, value, "folder", MAX_FOLDER_ID_BYTES)
        elif fnum == 3:
            snapshot = CID.decode(_field_bytes(wire, value, "snapshot CID", _MAX_CID_BYTES))
        elif fnum == 5:
            root = CID.decode(_field_bytes(wire, value, "root CID", _MAX_CID_BYTES))
        elif fnum == 6:
            counters.append(_field_bytes(wire, value, "version", SYNC_MAX_POINTER_BYTES))
        elif fnum == 7:
            if len(addrs) >= SYNC_MAX_INVITE_ADDRS:
                raise DecodeError(f"pointer: more than {SYNC_MAX_INVITE_ADDRS} addresses")
            raw = _field_bytes(wire, value, "address", ANNOUNCE_MAX_ADDR_LENGTH)
            try:
                addrs.append(_addrs.parse(raw.decode("utf-8")))
            except UnicodeDecodeError:
                raise DecodeError("pointer: address is not UTF-8") from None
        else:
            raise DecodeError(f"pointer: unknown field {fnum}")
    if fmt != POINTER_FORMAT:
        raise DecodeError(f"pointer: unsupported format {fmt}")
    if folder is None or not folder or snapshot is None or root is None:
        raise DecodeError("pointer: missing folder, snapshot or root")
    if not 0 < size <= SYNC_MAX_SNAPSHOT_BYTES + _SIGNED_SLACK:
        raise DecodeError(f"pointer: snapshot size {size} out of range")
    return Pointer(folder, snapshot, size, root, _decode_version(counters), tuple(addrs))


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
    ) -> None:
        self.node = node
        self.folder = folder
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
        repo = self.node.repo
        repo.add_pin(Pin(ptr.snapshot, name=name, shared=True))
        for pin in repo.pins():
            if pin.name == name and pin.cid != ptr.snapshot:
                repo.unpin(pin.cid)

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
        try:
            signed = decode_signed(data)
            snap = accept_snapshot(signed, self.config.folder, self.config.writers)
        except (DecodeError, SnapshotRejected) as exc:
            self._reject(author, ptr, exc)
            return
        fetched = _Tally()
        claims: dict[CID, int] = {}
        for e in snap.entries:
            if e.cid is not None:
                claims[e.cid] = max(claims.get(e.cid, 0), e.size, e.tsize)
        await self._prefetch(snap, claims, peers, fetched)

        async def ensure_blocks(root: CID) -> None:
            limit = claims.get(root, 0) + SYNC_FETCH_OVERHEAD
            fetched.add(await self._fetch(root, limit, peers))

        before = self.folder.index.version
        try:
            report = await self.folder.receive(data, ensure_blocks)
        except (DecodeError, SnapshotRejected, InsufficientSpace) as exc:
            self._reject(author, ptr, exc)
            return
        self.stats["received"] += 1
        self.stats["file_bytes_fetched"] += fetched.bytes
        self.on_event(
            _received_event(author, snap, report, got, fetched, time.monotonic() - started)
        )
        if self.folder.index.version != before:
            await self.announce()  # our index changed: members that missed it catch up from us

    async def _prefetch(
        self, snap: Snapshot, claims: dict[CID, int], peers: Sequence[Multiaddr], tally: _Tally
    ) -> None:
        """Many files to fetch: get the snapshot's whole DAG in one bitswap session."""
        plan = plan_merge(
            self.folder.index,
            snap,
            self.node.peer_id,
            writers=self.config.writers,
            ignored=self.folder.scanner.ignore.matches,
        )
        needed = {f.entry.cid for f in plan.fetches if f.source is None}
        if len(needed) < SYNC_BATCH_FETCH_MIN or snap.root is None:
            return
        _, dirs = build_tree(snap.entries, snap.root.hash_code)  # verified: the root matched
        await self.node.repo.blocks.put_many([(b.cid, b.data) for b in dirs], verified=True)
        limit = sum(claims.values()) + SYNC_FETCH_OVERHEAD
        tally.add(await self._fetch(snap.root, limit, peers))

    async def _fetch(self, root: CID, limit: int, peers: Sequence[Multiaddr]) -> FetchResult:
        """``fetch_blocks`` of ``root``, stopped with ``LimitExceeded`` past ``limit`` bytes."""
        over = False

        def check(p: FetchProgress) -> None:
            nonlocal over
            if p.bytes_done > limit or (p.file_size is not None and p.file_size > limit):
                over = True
                scope.cancel()

        with trio.CancelScope() as scope:
            return await fetch_blocks(
                self.node,
                root,
                peers=peers,
                on_progress=check,
                progress_interval=0.1,
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
    }
