"""Test helper: damage a stored block wherever the block store keeps it (file or row)."""

from __future__ import annotations

import sqlite3

from fileshare.content.blockstore import Blockstore
from fileshare.content.cid import CID


def corrupt_block(store: Blockstore, block: CID | bytes) -> None:
    """Flip one bit in the middle of a stored block, in its file or its small-block row."""
    mh = block.multihash if isinstance(block, CID) else block
    path = store.path_for(mh)
    if path.exists():
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        return
    db = sqlite3.connect(store.small.path)
    try:
        (value,) = db.execute("SELECT data FROM blocks WHERE mh = ?", (mh,)).fetchone()
        data = bytearray(value)
        data[len(data) // 2] ^= 0x01
        db.execute("UPDATE blocks SET data = ? WHERE mh = ?", (bytes(data), mh))
        db.commit()
    finally:
        db.close()


def folder_tree(files: dict[str, bytes]) -> tuple[CID, list[tuple[CID, bytes]]]:
    """The UnixFS tree a sync folder holding ``files`` (path -> bytes, one raw block each, so
    keep them small) publishes: its root and every block (files and directories) to store."""
    from fileshare.identity.keys import PrivateKey
    from fileshare.identity.peerid import PeerId
    from fileshare.sync.snapshot import Entry, build_tree
    from fileshare.sync.version import Version

    author = PeerId.from_public_key(PrivateKey.from_seed(b"\x07" * 32).public_key())
    entries, blocks = [], []
    for path, data in files.items():
        cid = CID.from_data(0x55, data)
        blocks.append((cid, data))
        entries.append(Entry(path, cid, len(data), 0, 0o644, len(data), author, Version()))
    root, dirs = build_tree(entries)
    return root, blocks + [(b.cid, b.data) for b in dirs]
