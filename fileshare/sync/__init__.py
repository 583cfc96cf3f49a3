"""Watch-folder sync: a folder kept identical on several nodes through signed snapshots.

Layers (network-independent): ``paths`` (safe names, writes only inside the folder), ``ignore``
(``.fileshareignore``), ``scanner`` (walk + cached import), ``version`` (version vectors),
``snapshot`` (UnixFS directory DAG + signed canonical metadata), ``merge`` (pure planning),
``apply`` (carry out a plan), ``folder`` (identity and invites), ``state`` (SQLite), ``engine``
(``SyncFolder``: ties them together), ``watcher`` (filesystem events under trio).
"""

from .apply import ApplyResult, BlocksReady, EnsureBlocks, FetchFile, InsufficientSpace
from .engine import ReceiveReport, ScanReport, SyncFolder, snapshot_file_blocks
from .folder import FolderConfig, Invite, format_invite, parse_invite
from .snapshot import (
    Entry,
    SignedSnapshot,
    Snapshot,
    SnapshotRejected,
    accept_snapshot,
    decode_signed,
    sign_snapshot,
)
from .watcher import run_folder, watch_folder

__all__ = [
    "ApplyResult",
    "BlocksReady",
    "EnsureBlocks",
    "Entry",
    "FetchFile",
    "FolderConfig",
    "InsufficientSpace",
    "Invite",
    "ReceiveReport",
    "ScanReport",
    "SignedSnapshot",
    "Snapshot",
    "SnapshotRejected",
    "SyncFolder",
    "accept_snapshot",
    "decode_signed",
    "format_invite",
    "parse_invite",
    "run_folder",
    "sign_snapshot",
    "snapshot_file_blocks",
    "watch_folder",
]
