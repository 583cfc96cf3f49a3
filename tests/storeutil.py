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
