"""The sans-io fetch session's public types: its configuration, the actions ``poll`` returns, and
the progress and per-peer figures it reports (see ``session``)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ... import limits
from ...content.cid import CID
from .messages import Message, WantEntry, Wantlist

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    initial_window: int = limits.BITSWAP_INITIAL_WINDOW
    max_window: int = limits.BITSWAP_MAX_WINDOW  # blocks; more for small blocks, see below
    max_window_bytes: int = limits.BITSWAP_MAX_WINDOW_BYTES  # raises max_window for small blocks
    max_window_blocks: int = limits.BITSWAP_MAX_WINDOW_BLOCKS  # ... up to this many
    min_window: int = 1
    queue_target: float = limits.BITSWAP_QUEUE_TARGET  # seconds of throughput in flight
    refill_fraction: float = 0.125  # top a window up once this much of it is free (batched wants)
    rate_interval: float = 0.05  # busy seconds per throughput sample
    idle_timeout: float = limits.BITSWAP_PEER_IDLE_TIMEOUT
    max_strikes: int = limits.BITSWAP_MAX_STRIKES
    max_bad_blocks: int = limits.BITSWAP_MAX_BAD_BLOCKS
    probe_interval: float = limits.BITSWAP_PROBE_INTERVAL
    max_copies: int = limits.BITSWAP_MAX_ENDGAME_COPIES
    endgame_margin: float = 0.5  # copy only if the idle peer's ETA < margin * holder's
    check_local: bool = True  # emit CheckLocal for every CID before fetching it (resume)
    max_depth: int = limits.MAX_DAG_DEPTH


# --- actions (outputs of poll) ---


@dataclass(frozen=True, slots=True)
class SendWants(Generic[P]):
    peer: P
    entries: tuple[WantEntry, ...]

    def message(self) -> Message:
        return Message(wantlist=Wantlist(self.entries))


@dataclass(frozen=True, slots=True)
class StoreBlock:
    """A verified block: persist it (it will not be offered again).

    ``parts``: with ``file_parts``, the file bytes this block holds as ``(offset, bytes)`` (a block
    used at several places in the file appears once per place).
    """

    cid: CID
    data: bytes | memoryview  # a received block may be a view into its message
    parts: tuple[tuple[int, bytes | memoryview], ...] = ()


@dataclass(frozen=True, slots=True)
class CheckLocal:
    """Look these up in the local store and answer each with ``local_result``."""

    cids: tuple[CID, ...]


@dataclass(frozen=True, slots=True)
class PeerDropped(Generic[P]):
    peer: P
    reason: str


Action = SendWants[P] | StoreBlock | CheckLocal | PeerDropped[P]


@dataclass(frozen=True, slots=True)
class Progress:
    blocks_done: int  # fetched + found locally
    bytes_done: int
    blocks_known: int  # discovered so far (done or not)
    blocks_local: int
    bytes_local: int
    file_size: int | None  # from the root, once it is known to be a file
    file_bytes_done: int
    duplicate_blocks: int
    duplicate_bytes: int  # verified bytes received twice, outside the end game
    endgame_duplicate_bytes: int  # ... of blocks copied in the end game
    bad_blocks: int
    in_flight: int
    peers_active: int


@dataclass(frozen=True, slots=True)
class PeerStats:
    active: bool
    blocks_received: int
    bytes_received: int
    duplicate_bytes: int
    bad_blocks: int
    strikes: int
    rate: float | None  # bytes/s while busy
    window: int
    in_flight: int
