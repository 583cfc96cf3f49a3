"""Per-peer server-side state: the wantlist a peer has sent us, and what we exchanged with it.

Wants are keyed by the CID exactly as the peer sent it (a presence must echo that CID). A want
for a block never downgrades to a want for a HAVE; re-sending a want renews it (it gets a new
``seq``, so anything queued for the old one is stale, and a DONT_HAVE may be sent again). Wants
beyond ``max_wants`` are ignored and counted in ``wants_dropped``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...content.cid import CID
from ...limits import BITSWAP_MAX_WANTLIST_PER_PEER
from .messages import Wantlist, WantType


@dataclass(slots=True)
class Want:
    cid: CID
    priority: int
    want_type: WantType
    send_dont_have: bool
    seq: int  # unique per (re)newed want; queue entries carrying another seq are stale
    queued_size: int = 0  # block bytes queued for sending
    queued: bool = False  # a block task is queued (an empty block has queued_size 0)
    parked: bool = False  # waiting for the block to arrive in our store


class Ledger:
    """One peer's wantlist as we (the server) see it, plus byte and block counters."""

    __slots__ = (
        "blocks_received",
        "blocks_sent",
        "bytes_received",
        "bytes_sent",
        "max_wants",
        "messages_received",
        "presences_sent",
        "protocol",
        "wants",
        "wants_dropped",
    )

    def __init__(self, protocol: str, max_wants: int = BITSWAP_MAX_WANTLIST_PER_PEER) -> None:
        self.protocol = protocol
        self.max_wants = max_wants
        self.wants: dict[CID, Want] = {}
        self.bytes_sent = 0
        self.blocks_sent = 0
        self.presences_sent = 0
        self.bytes_received = 0
        self.blocks_received = 0
        self.messages_received = 0
        self.wants_dropped = 0

    def __len__(self) -> int:
        return len(self.wants)

    def apply(self, wantlist: Wantlist, next_seq: int) -> tuple[list[Want], list[Want]]:
        """Apply a received wantlist; return ``(new or renewed wants, removed wants)``.

        ``next_seq`` is the first sequence number to hand out (the caller keeps the counter).
        A ``full`` wantlist removes every want it does not list.
        """
        renewed: list[Want] = []
        removed: list[Want] = []
        if wantlist.full:
            listed = {e.cid for e in wantlist.entries if not e.cancel}
            for cid in [c for c in self.wants if c not in listed]:
                removed.append(self.wants.pop(cid))
        seq = next_seq
        for entry in wantlist.entries:
            old = self.wants.get(entry.cid)
            if entry.cancel:
                if old is not None:
                    removed.append(self.wants.pop(entry.cid))
                continue
            if old is None and len(self.wants) >= self.max_wants:
                self.wants_dropped += 1
                continue
            want_type = entry.want_type
            if old is not None:
                removed.append(old)  # the old version's queued work is now stale
                if old.want_type == WantType.BLOCK:
                    want_type = WantType.BLOCK
            want = Want(entry.cid, entry.priority, want_type, entry.send_dont_have, seq)
            seq += 1
            self.wants[entry.cid] = want
            renewed.append(want)
        return renewed, removed

    def current(self, cid: CID, seq: int) -> Want | None:
        """The want for ``cid`` if it is still the one numbered ``seq``."""
        want = self.wants.get(cid)
        return want if want is not None and want.seq == seq else None

    def remove(self, cid: CID) -> Want | None:
        return self.wants.pop(cid, None)

    def record_sent(self, blocks: int, block_bytes: int, presences: int) -> None:
        self.blocks_sent += blocks
        self.bytes_sent += block_bytes
        self.presences_sent += presences

    def record_received(self, blocks: int, block_bytes: int) -> None:
        self.blocks_received += blocks
        self.bytes_received += block_bytes
