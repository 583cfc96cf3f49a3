"""Sans-io bitswap server: decides what to send each peer from its wantlist and a view of the store.

The engine never holds block data. ``receive`` applies a peer's wantlist and looks up sizes via
the ``StoreView``; ``next_response`` returns a ``Response`` naming the presences to send and the
blocks to load (highest priority first, packed up to a byte budget so a message stays well under
``BITSWAP_MAX_MESSAGE``); the driver loads those blocks one by one and calls
``Response.encode(datas)``. Driver loop per peer::

    if engine.receive(peer, msg, protocol):
        while (resp := engine.next_response(peer)) is not None:
            datas = [await store.get(cid) or None for cid in resp.blocks]
            await send(peer, resp.encode(datas))

A want we cannot answer yet is parked (with a DONT_HAVE if the peer asked for one); when the
block arrives, ``block_added`` re-queues it. Wants are removed once answered with a block or a
HAVE, as the spec's reference implementations do.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ...content.cid import CID
from ...limits import (
    BITSWAP_MAX_MESSAGE,
    BITSWAP_MAX_PRESENCES,
    BITSWAP_MAX_WANTLIST_PER_PEER,
    BITSWAP_RESPONSE_TARGET,
    MAX_BLOCK_SIZE,
)
from .ledger import Ledger, Want
from .messages import (
    INT32_MAX,
    PROTOCOL_1_0_0,
    PROTOCOL_1_2_0,
    BlockPresence,
    Message,
    Payload,
    Prefix,
    PresenceType,
    WantType,
    encode_message,
    field_size,
    payload_size,
    presence_size,
)

P = TypeVar("P", bound=Hashable)

_PENDING_FIELD = 6  # pendingBytes: tag + int32 varint


class StoreView(Protocol):
    """What the engine may ask the block store (synchronously; both must be cheap)."""

    def has(self, cid: CID) -> bool: ...

    def size(self, cid: CID) -> int | None:
        """Bytes of the block, or None if we do not hold it."""
        ...


@dataclass(frozen=True, slots=True)
class ResponseBlock:
    cid: CID
    size: int  # as the store reported it when queued
    send_dont_have: bool


@dataclass(frozen=True, slots=True)
class Response(Generic[P]):
    """One message's worth of answers for ``peer``: presences, and blocks for the driver to load."""

    peer: P
    presences: tuple[BlockPresence, ...]
    blocks: tuple[ResponseBlock, ...]
    pending_bytes: int
    protocol: str

    @property
    def cids(self) -> list[CID]:
        return [b.cid for b in self.blocks]

    def encode(self, datas: Sequence[bytes | None]) -> bytes:
        """The message, given each block's bytes in ``blocks`` order (None: no longer in the store).

        A missing block becomes a DONT_HAVE when the peer asked for those (1.2.0).
        """
        return encode_message(self.message(datas))

    def message(self, datas: Sequence[bytes | None]) -> Message:
        """``encode`` before the encoding: the ``Message`` to send."""
        if len(datas) != len(self.blocks):
            raise ValueError("one data item per response block expected")
        presences = list(self.presences)
        payload: list[Payload] = []
        legacy: list[bytes] = []
        for block, data in zip(self.blocks, datas, strict=True):
            if data is None or len(data) > MAX_BLOCK_SIZE:
                if block.send_dont_have and self.protocol == PROTOCOL_1_2_0:
                    presences.append(BlockPresence(block.cid, PresenceType.DONT_HAVE))
            elif self.protocol == PROTOCOL_1_0_0:
                legacy.append(data)
            else:
                payload.append(Payload.of(block.cid, data))
        return Message(
            blocks=tuple(legacy),
            payload=tuple(payload),
            presences=tuple(presences),
            pending_bytes=self.pending_bytes if self.protocol == PROTOCOL_1_2_0 else 0,
        )


class _PeerQueues:
    __slots__ = ("blocks", "ledger", "pending_bytes", "presences")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        # heaps of (-priority, seq, cid[, presence type]); entries whose want changed are stale
        self.presences: list[tuple[int, int, CID, PresenceType]] = []
        self.blocks: list[tuple[int, int, CID]] = []
        self.pending_bytes = 0


class DecisionEngine(Generic[P]):
    """Answers every connected peer's wantlist from ``store``; see the module docstring."""

    def __init__(
        self,
        store: StoreView,
        *,
        target_bytes: int = BITSWAP_RESPONSE_TARGET,
        max_wants_per_peer: int = BITSWAP_MAX_WANTLIST_PER_PEER,
    ) -> None:
        if not 0 < target_bytes <= BITSWAP_MAX_MESSAGE:
            raise ValueError(f"target_bytes must be in 1..{BITSWAP_MAX_MESSAGE}")
        self.store = store
        self.target_bytes = target_bytes
        self.max_wants_per_peer = max_wants_per_peer
        self._peers: dict[P, _PeerQueues] = {}
        self._parked: dict[bytes, set[tuple[P, CID]]] = {}  # multihash -> wants waiting for it
        self._seq = 0

    # --- inputs ---
    def receive(self, peer: P, message: Message, protocol: str = PROTOCOL_1_2_0) -> bool:
        """Apply a message from ``peer``; return True if there is something to send it."""
        st = self._peers.get(peer)
        if st is None:
            st = self._peers[peer] = _PeerQueues(Ledger(protocol, self.max_wants_per_peer))
        ledger = st.ledger
        ledger.protocol = protocol
        ledger.messages_received += 1
        blocks = message.all_payloads()
        if blocks:
            ledger.record_received(len(blocks), sum(len(b.data) for b in blocks))
        if message.wantlist is not None:
            renewed, removed = ledger.apply(message.wantlist, self._seq)
            self._seq += len(renewed)
            for want in removed:
                self._drop(peer, st, want)
            for want in renewed:
                self._evaluate(peer, st, want)
        return self.has_work(peer)

    def block_added(self, cid: CID) -> list[P]:
        """A block arrived in the store; return the peers that now have something to be sent."""
        waiting = self._parked.pop(cid.multihash, None)
        if not waiting:
            return []
        woken: list[P] = []
        for peer, want_cid in waiting:
            st = self._peers.get(peer)
            want = st.ledger.wants.get(want_cid) if st is not None else None
            if st is None or want is None or not want.parked:
                continue
            want.parked = False
            self._evaluate(peer, st, want)
            if peer not in woken:
                woken.append(peer)
        return woken

    def peer_disconnected(self, peer: P) -> None:
        st = self._peers.pop(peer, None)
        if st is not None:
            for want in st.ledger.wants.values():
                self._unpark(peer, want)

    # --- outputs ---
    def has_work(self, peer: P) -> bool:
        st = self._peers.get(peer)
        return st is not None and bool(st.presences or st.blocks)

    def peers_with_work(self) -> list[P]:
        return [p for p, st in self._peers.items() if st.presences or st.blocks]

    def ledger(self, peer: P) -> Ledger | None:
        st = self._peers.get(peer)
        return st.ledger if st is not None else None

    def next_response(self, peer: P) -> Response[P] | None:
        """The next message for ``peer`` (presences first, then blocks by priority), or None.

        The answered wants are removed from the ledger and counted as sent.
        """
        st = self._peers.get(peer)
        if st is None:
            return None
        ledger = st.ledger
        budget = self.target_bytes
        size = _PENDING_FIELD
        presences: list[BlockPresence] = []
        while st.presences and len(presences) < BITSWAP_MAX_PRESENCES:
            _, seq, cid, kind = st.presences[0]
            want = ledger.current(cid, seq)
            if want is None or (kind == PresenceType.DONT_HAVE and not want.parked):
                heapq.heappop(st.presences)
                continue
            presence = BlockPresence(cid, kind)
            cost = presence_size(presence)
            if presences and size + cost > budget:
                break
            heapq.heappop(st.presences)
            presences.append(presence)
            size += cost
            if kind == PresenceType.HAVE:
                ledger.remove(cid)
        blocks: list[ResponseBlock] = []
        legacy = ledger.protocol == PROTOCOL_1_0_0
        while st.blocks:
            _, seq, cid = st.blocks[0]
            want = ledger.current(cid, seq)
            if want is None or not want.queued:
                heapq.heappop(st.blocks)
                continue
            n = want.queued_size
            cost = field_size(n) if legacy else payload_size(Prefix.of(cid), n)
            limit = BITSWAP_MAX_MESSAGE if not blocks else budget
            if size + cost > limit:
                break
            heapq.heappop(st.blocks)
            blocks.append(ResponseBlock(cid, n, want.send_dont_have))
            size += cost
            st.pending_bytes -= n
            ledger.remove(cid)
        if not presences and not blocks:
            return None
        ledger.record_sent(len(blocks), sum(b.size for b in blocks), len(presences))
        return Response(
            peer,
            tuple(presences),
            tuple(blocks),
            min(st.pending_bytes, INT32_MAX),
            ledger.protocol,
        )

    # --- internals ---
    def _evaluate(self, peer: P, st: _PeerQueues, want: Want) -> None:
        """Queue the answer to a new, renewed or woken want (or park it)."""
        key = (-want.priority, want.seq)
        presences_ok = st.ledger.protocol == PROTOCOL_1_2_0
        if want.want_type == WantType.HAVE and presences_ok:
            if self.store.has(want.cid):
                heapq.heappush(st.presences, (*key, want.cid, PresenceType.HAVE))
                return
        else:
            size = self.store.size(want.cid)
            if size is not None and size <= MAX_BLOCK_SIZE:
                want.queued_size = size
                want.queued = True
                st.pending_bytes += size
                heapq.heappush(st.blocks, (*key, want.cid))
                return
        want.parked = True
        self._parked.setdefault(want.cid.multihash, set()).add((peer, want.cid))
        if want.send_dont_have and presences_ok:
            heapq.heappush(st.presences, (*key, want.cid, PresenceType.DONT_HAVE))

    def _drop(self, peer: P, st: _PeerQueues, want: Want) -> None:
        """Forget the queued work of a cancelled or replaced want (its heap entries go stale)."""
        st.pending_bytes -= want.queued_size
        want.queued_size = 0
        want.queued = False
        self._unpark(peer, want)

    def _unpark(self, peer: P, want: Want) -> None:
        if want.parked:
            want.parked = False
            waiting = self._parked.get(want.cid.multihash)
            if waiting is not None:
                waiting.discard((peer, want.cid))
                if not waiting:
                    del self._parked[want.cid.multihash]
