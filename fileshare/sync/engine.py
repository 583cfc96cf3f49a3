"""One synced folder on this node: scan, publish signed snapshots, receive and apply others'.

The network side drives it: ``scan()`` after the watcher reports changes (or on a timer);
``publish()`` for the signed snapshot bytes to put on the folder's topic (when ``scan`` reported a
change); ``receive(data, ensure_blocks)`` for a snapshot a peer published (``receive_accepted``
when the caller already decoded and accepted it). Operations are
serialised by a lock, so a scan never runs while a snapshot is being applied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..content.builder import Block, build_dag, chunk_bytes
from ..content.cid import CID
from ..content.layout import Layout, make_layout
from ..identity.keys import PrivateKey
from ..identity.peerid import PeerId
from ..limits import SYNC_SETTLE_SECONDS
from ..repo import Pin, Repo
from .apply import ApplyResult, BlocksReady, EnsureBlocks, FetchFile, apply_plan
from .folder import FolderConfig
from .ignore import IgnoreRules
from .merge import Plan, commit, plan_merge, record_scan
from .paths import FolderRoot
from .scanner import Scanner, ScanResult
from .snapshot import Snapshot, accept_snapshot, build_tree, decode_signed, sign_snapshot
from .state import FolderDB

PIN_PREFIX = "sync:"


@dataclass(slots=True)
class ScanReport:
    changed: bool  # the index changed: publish a new snapshot
    result: ScanResult


@dataclass(slots=True)
class ReceiveReport:
    plan: Plan
    applied: ApplyResult = field(default_factory=ApplyResult)


class SyncFolder:
    """A folder kept in sync. Close with ``close()``."""

    def __init__(
        self,
        root: Path | str,
        repo: Repo,
        key: PrivateKey,
        config: FolderConfig,
        *,
        layout: Layout | None = None,
        ignore: IgnoreRules | None = None,
        settle: float = SYNC_SETTLE_SECONDS,
    ) -> None:
        self.root = FolderRoot(root)
        self.repo = repo
        self.key = key
        self.me = PeerId.from_public_key(key.public_key())
        self.config = config
        self.layout = layout or make_layout()
        self.db = FolderDB(repo, config.folder)
        self.scanner = Scanner(
            self.root.path, repo, self.db, layout=self.layout, ignore=ignore, settle=settle
        )
        self.index = self.db.load_index(self.me)
        self._lock = trio.Lock()
        self._root_pin: CID | None = None

    def close(self) -> None:
        self.db.close()
        self.root.close()

    async def scan(self) -> ScanReport:
        async with self._lock:
            return await self._scan()

    async def _scan(self) -> ScanReport:
        result = await self.scanner.scan()
        ignore = self.scanner.ignore

        def keep(path: str) -> bool:
            return path in result.unstable or path in result.skipped or ignore.matches(path)

        new = record_scan(self.index, result.files, self.me, keep=keep)
        changed = new is not self.index
        if changed:
            self.index = new
            await trio.to_thread.run_sync(self.db.save_index, new)
        return ScanReport(changed, result)

    def snapshot(self) -> Snapshot:
        """The current index as a snapshot with its directory root (blocks not stored)."""
        return self._snapshot_and_tree()[0]

    def _snapshot_and_tree(self) -> tuple[Snapshot, list[Block]]:
        root, blocks = build_tree(self.index.entries, self.layout.hash_code)
        snap = Snapshot(
            self.config.folder,
            self.me,
            self.index.version,
            self.index.entries,
            root,
            int(time.time()),
        )
        return snap, blocks

    async def publish(self) -> tuple[bytes, Snapshot]:
        """Store the directory DAG, pin its root, and return the signed snapshot bytes."""
        async with self._lock:
            snap, blocks = self._snapshot_and_tree()
            await self.repo.blocks.put_many([(b.cid, b.data) for b in blocks], verified=True)
            assert snap.root is not None
            await trio.to_thread.run_sync(self._repin, snap.root)
            return sign_snapshot(snap, self.key), snap

    def _repin(self, root: CID) -> None:
        self.repo.replace_named_pin(Pin(root, name=PIN_PREFIX + self.config.id_text, shared=True))

    async def receive(
        self,
        data: bytes,
        ensure_blocks: EnsureBlocks,
        blocks_ready: BlocksReady | None = None,
        fetch_file: FetchFile | None = None,
    ) -> ReceiveReport:
        """Decode, check and apply a peer's snapshot.

        Raises ``DecodeError`` (malformed), ``SnapshotRejected`` (other folder, not a writer, bad
        signature or root), ``InsufficientSpace`` (claims more than fits; nothing written).
        """
        signed = decode_signed(data)
        snap = accept_snapshot(signed, self.config.folder, self.config.writers)
        return await self.receive_accepted(snap, ensure_blocks, blocks_ready, fetch_file)

    async def receive_accepted(
        self,
        snap: Snapshot,
        ensure_blocks: EnsureBlocks,
        blocks_ready: BlocksReady | None = None,
        fetch_file: FetchFile | None = None,
    ) -> ReceiveReport:
        """Apply a snapshot ``accept_snapshot`` returned for this folder (see ``receive``; the
        optional callables are ``apply_plan``'s)."""
        async with self._lock:
            await self._scan()
            plan = plan_merge(
                self.index,
                snap,
                self.me,
                writers=self.config.writers,
                ignored=self.scanner.ignore.matches,
            )
            if plan.rejected is not None or plan.empty:
                return ReceiveReport(plan)
            applied = await apply_plan(
                self.root, self.repo, self.db, plan, ensure_blocks, blocks_ready, fetch_file
            )
            self.index = commit(self.index, plan, applied.done)
            await trio.to_thread.run_sync(self.db.save_index, self.index)
            return ReceiveReport(plan, applied)


def snapshot_file_blocks(data: bytes, layout: Layout) -> tuple[CID, list[tuple[CID, bytes]]]:
    """Signed snapshot bytes as a UnixFS file DAG, for serving them by CID over bitswap."""
    root, blocks = build_dag(chunk_bytes(data, layout.chunk_size), layout)
    return root, [(b.cid, b.data) for b in blocks]
