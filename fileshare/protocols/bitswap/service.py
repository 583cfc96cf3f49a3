"""The trio driver of bitswap: streams, the server (``DecisionEngine``) and fetch sessions.

Per connected peer we keep ONE outbound stream (a ``_Link``), opened on first need with the first
of ``PROTOCOLS`` the peer accepts. Its writer task sends, in this order, our queued wants (from
fetch sessions) and then our answers to the peer's wants, one response at a time: the blocks of a
response are loaded (and verified) from the store in a worker thread just before it is sent, so
memory holds at most one response per peer, whatever the file size.

Inbound streams carry the peer's messages (uvarint-length-prefixed, at most
``BITSWAP_MAX_MESSAGE``); a message that does not decode closes that stream with a logged reason
and counts against the peer in every session it serves. A message is handled completely (wants
to the engine; payloads hashed, in a worker thread when large, and routed to the sessions that
asked for them; blocks written) before the next is read, so a slow disk slows the sender through
yamux flow control instead of filling memory.

A payload whose CID nobody wants is dropped; it counts as a bad block only against a peer we
asked for blocks (in the sessions that asked it), since a peer serving corrupt data for a want
produces exactly such a payload.

    bitswap = BitswapService(host, repo.blocks)
    async with bitswap.session(root) as fetch:
        await fetch.add_peer(peer_id, has_blocks=True)
        await fetch.run(stall_timeout=60)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager

import trio

from ...content.blockstore import Blockstore
from ...content.cid import CID
from ...errors import DecodeError, FileshareError, LimitExceeded, NotFound, VerificationError
from ...identity.peerid import PeerId
from ...limits import BITSWAP_MAX_MESSAGE, BITSWAP_MAX_WANTLIST_ENTRIES, KIB, NEGOTIATION_TIMEOUT
from ...net.host import Connection, Host, NetStream
from ...wire.protobuf import LengthPrefixedDecoder, length_prefixed
from .client import FetchSession
from .messages import (
    PROTOCOL_1_2_0,
    PROTOCOLS,
    BlockPresence,
    Message,
    Payload,
    WantEntry,
    Wantlist,
    decode_message,
    encode_message,
)
from .server import DecisionEngine, Response
from .session import SessionConfig

__all__ = ["BitswapService"]

log = logging.getLogger("fileshare.protocols.bitswap")

_READ_CHUNK = 256 * KIB
_HASH_INLINE = 64 * KIB  # payload bytes hashed on the trio thread; more go to a worker thread
# End game: copy a block to an idle peer only if it should arrive in under a quarter of the time
# its holder still needs (the session's default, a half, cost ~2-6 % duplicate bytes across four
# equally capped providers in bench/fetch.py; this keeps copies for really slow holders).
ENDGAME_MARGIN = 0.25
_STREAM_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    trio.TooSlowError,
    OSError,
    EOFError,
    FileshareError,
)


class _StoreView:
    """The engine's synchronous view of the store: sizes looked up in a worker thread beforehand
    (``primed``), falling back to a ``stat`` for anything not primed."""

    def __init__(self, blocks: Blockstore) -> None:
        self._blocks = blocks
        self._sizes: dict[bytes, int | None] = {}

    @contextlib.contextmanager
    def primed(self, sizes: dict[bytes, int | None]) -> Iterator[None]:
        self._sizes = sizes
        try:
            yield
        finally:
            self._sizes = {}

    def size(self, cid: CID) -> int | None:
        mh = cid.multihash
        if mh in self._sizes:
            return self._sizes[mh]
        return _stat_size(self._blocks, mh)

    def has(self, cid: CID) -> bool:
        return self.size(cid) is not None


def _stat_size(blocks: Blockstore, mh: bytes) -> int | None:
    try:
        return os.stat(blocks.path_for(mh)).st_size
    except OSError:
        return None


def _stat_sizes(blocks: Blockstore, cids: Sequence[CID]) -> dict[bytes, int | None]:
    return {c.multihash: _stat_size(blocks, c.multihash) for c in cids}


def _load_response(blocks: Blockstore, resp: Response[PeerId]) -> bytes:
    """Worker thread: read (and verify) a response's blocks and encode the framed message."""
    datas: list[bytes | None] = []
    for cid in resp.cids:
        try:
            datas.append(blocks.get_sync(cid, verify=True))
        except NotFound:
            datas.append(None)
        except VerificationError as exc:
            log.warning("not serving %s: %s", cid, exc)
            datas.append(None)
    return length_prefixed(resp.encode(datas))


def _payload_cids(payloads: Sequence[Payload]) -> list[CID | None]:
    """The CID each payload hashes to under its prefix (None: cannot be hashed)."""
    out: list[CID | None] = []
    for p in payloads:
        try:
            out.append(p.cid())
        except DecodeError:
            out.append(None)
    return out


class _Link:
    """Our one outbound bitswap stream to a peer and its queue of wants."""

    def __init__(self, peer: PeerId, conn: Connection) -> None:
        self.peer = peer
        self.conn = conn
        self.wants: list[WantEntry] = []
        self.wake = trio.Event()
        self.ready = trio.Event()  # set once the stream is open (or could not be opened)
        self.protocol: str | None = None
        self.closed = False
        self.scope = trio.CancelScope()

    def kick(self) -> None:
        self.wake.set()


class BitswapService:
    """Bitswap on a Host, serving every block of ``blocks`` and running fetch sessions.

    ``send_rate`` caps the bytes per second of all responses we send (None: no cap).
    """

    def __init__(
        self,
        host: Host,
        blocks: Blockstore,
        *,
        send_rate: float | None = None,
        session_config: SessionConfig | None = None,
    ) -> None:
        self.host = host
        self.blocks = blocks
        self.send_rate = send_rate
        self.session_config = session_config or SessionConfig(endgame_margin=ENDGAME_MARGIN)
        self.stats: Counter[str] = Counter()
        self._view = _StoreView(blocks)
        self.engine: DecisionEngine[PeerId] = DecisionEngine(self._view)
        self._links: dict[PeerId, _Link] = {}
        self._sessions: list[FetchSession] = []
        self._wanted: dict[bytes, list[FetchSession]] = {}  # multihash -> sessions that asked
        self._send_at = 0.0  # rate limit: earliest time of the next response
        for proto in PROTOCOLS:
            host.set_stream_handler(proto, self._handle_inbound)
        host.on_connect(self._on_connect)
        host.on_disconnect(self._on_disconnect)

    # --- application API ---

    @asynccontextmanager
    async def session(
        self, root: CID, config: SessionConfig | None = None, *, accept_new_peers: bool = True
    ) -> AsyncIterator[FetchSession]:
        """A fetch session for the DAG under ``root``; ``accept_new_peers`` adds every peer that
        connects meanwhile (probed with want-have)."""
        fetch = FetchSession(self, root, config or self.session_config)
        fetch.accept_new_peers = accept_new_peers
        self._sessions.append(fetch)
        try:
            yield fetch
            await fetch.finish()
        finally:
            self._sessions.remove(fetch)
            for mh in fetch.wanted:
                sessions = self._wanted.get(mh)
                if sessions is not None and fetch in sessions:
                    sessions.remove(fetch)
                    if not sessions:
                        del self._wanted[mh]

    def blocks_added(self, cids: Iterable[CID]) -> None:
        """New blocks are in the store: answer the wants that were waiting for them."""
        for cid in cids:
            for peer in self.engine.block_added(cid):
                link = self._ensure_link(peer)
                if link is not None:
                    link.kick()

    async def open_link(self, peer: PeerId) -> str | None:
        """Open (or reuse) our stream to a connected ``peer``; its protocol, or None."""
        link = self._ensure_link(peer)
        if link is None:
            return None
        await link.ready.wait()
        return link.protocol

    def link_protocol(self, peer: PeerId) -> str | None:
        link = self._links.get(peer)
        return link.protocol if link is not None and not link.closed else None

    # --- used by FetchSession ---

    def send_wants(self, fetch: FetchSession, peer: PeerId, entries: Sequence[WantEntry]) -> None:
        for entry in entries:
            if not entry.cancel:
                sessions = self._wanted.setdefault(entry.cid.multihash, [])
                if fetch not in sessions:
                    sessions.append(fetch)
                    fetch.wanted.add(entry.cid.multihash)
        link = self._ensure_link(peer)
        if link is None:
            if not all(e.cancel for e in entries):
                self.host.nursery.start_soon(self._peer_gone, peer)
            return
        link.wants.extend(entries)
        link.kick()

    # --- connections ---

    async def _on_connect(self, conn: Connection) -> None:
        peer = conn.remote_peer
        for fetch in list(self._sessions):
            if fetch.accept_new_peers:
                await fetch.add_peer(peer, has_blocks=False)

    async def _on_disconnect(self, conn: Connection) -> None:
        if self.host.connection_to(conn.remote_peer) is None:
            await self._peer_gone(conn.remote_peer)

    async def _peer_gone(self, peer: PeerId) -> None:
        link = self._links.get(peer)
        if link is not None:
            link.scope.cancel()
        if self.host.connection_to(peer) is None:
            self.engine.peer_disconnected(peer)
        for fetch in list(self._sessions):
            await fetch.remove_peer(peer)

    # --- outbound stream ---

    def _ensure_link(self, peer: PeerId) -> _Link | None:
        link = self._links.get(peer)
        if link is not None and not link.closed:
            return link
        conn = self.host.connection_to(peer)
        if conn is None:
            return None
        link = self._links[peer] = _Link(peer, conn)
        self.host.nursery.start_soon(self._run_link, link)
        return link

    async def _run_link(self, link: _Link) -> None:
        stream: NetStream | None = None
        try:
            with link.scope:
                try:
                    with trio.fail_after(NEGOTIATION_TIMEOUT):
                        stream, link.protocol = await link.conn.open_stream(list(PROTOCOLS))
                except _STREAM_ERRORS as exc:
                    log.debug("no bitswap stream to %s: %s", link.peer, exc or type(exc).__name__)
                    return
                finally:
                    link.ready.set()
                await self._write_loop(link, stream)
        except _STREAM_ERRORS as exc:
            log.info("bitswap stream to %s ended: %s", link.peer, exc or type(exc).__name__)
            if stream is not None:
                await stream.reset()
                stream = None
        finally:
            link.closed = True
            link.ready.set()
            if self._links.get(link.peer) is link:
                del self._links[link.peer]
            if stream is not None:
                with trio.move_on_after(1.0) as scope:
                    scope.shield = True
                    with contextlib.suppress(Exception):
                        await stream.aclose()
            if link.wants and not all(e.cancel for e in link.wants):
                # wants we could not send: the sessions must ask someone else
                self.host.nursery.start_soon(self._peer_gone, link.peer)

    async def _write_loop(self, link: _Link, stream: NetStream) -> None:
        peer = link.peer
        while True:
            if link.wants:
                entries = link.wants[:BITSWAP_MAX_WANTLIST_ENTRIES]
                del link.wants[:BITSWAP_MAX_WANTLIST_ENTRIES]
                frame = length_prefixed(encode_message(Message(wantlist=Wantlist(tuple(entries)))))
                await stream.send_all(frame)
                self.stats["want_messages_sent"] += 1
                continue
            if self.send_rate is not None and trio.current_time() < self._send_at:
                # rate cap: wait before committing to a response, so cancels still count
                await trio.sleep_until(self._send_at)
                continue
            resp = self.engine.next_response(peer)
            if resp is not None:
                frame = await trio.to_thread.run_sync(_load_response, self.blocks, resp)
                self._charge(len(frame))
                await stream.send_all(frame)
                self.stats["responses_sent"] += 1
                self.stats["response_bytes_sent"] += len(frame)
                continue
            await link.wake.wait()
            link.wake = trio.Event()

    def _charge(self, nbytes: int) -> None:
        """Rate cap: the next response waits until these bytes are paid for at ``send_rate``."""
        if self.send_rate is not None:
            self._send_at = max(trio.current_time(), self._send_at) + nbytes / self.send_rate

    # --- inbound stream ---

    async def _handle_inbound(self, stream: NetStream, conn: Connection) -> None:
        peer = conn.remote_peer
        protocol = stream.protocol or PROTOCOL_1_2_0
        decoder = LengthPrefixedDecoder(BITSWAP_MAX_MESSAGE)
        while True:
            data = await stream.receive_some(_READ_CHUNK)
            if not data:
                return
            try:
                frames = decoder.feed(data)
            except LimitExceeded as exc:
                await self._bad_stream(stream, peer, exc)
                return
            for frame in frames:
                try:
                    msg = decode_message(frame)
                except (DecodeError, LimitExceeded) as exc:
                    await self._bad_stream(stream, peer, exc)
                    return
                del frame
                await self._on_message(peer, msg, protocol)

    async def _bad_stream(self, stream: NetStream, peer: PeerId, exc: Exception) -> None:
        self.stats["bad_messages"] += 1
        log.warning("closing bitswap stream from %s: bad message: %s", peer, exc)
        await stream.reset()
        now = trio.current_time()
        for fetch in list(self._sessions):
            if fetch.has_peer(peer):
                fetch.session.report_bad(peer, now)
                await fetch.pump()
                fetch.wake()

    async def _on_message(self, peer: PeerId, msg: Message, protocol: str) -> None:
        self.stats["messages_received"] += 1
        if msg.wantlist is not None and msg.wantlist.entries:
            cids = [e.cid for e in msg.wantlist.entries if not e.cancel]
            sizes = await trio.to_thread.run_sync(_stat_sizes, self.blocks, cids) if cids else {}
            with self._view.primed(sizes):
                work = self.engine.receive(peer, msg, protocol)
            if work:
                link = self._ensure_link(peer)
                if link is not None:
                    link.kick()
        elif msg.wantlist is not None or msg.payload or msg.blocks:
            self.engine.receive(peer, msg, protocol)
        payloads = msg.all_payloads()
        if msg.presences or payloads:
            await self._deliver(peer, msg.presences, payloads)

    async def _deliver(
        self, peer: PeerId, presences: Sequence[BlockPresence], payloads: list[Payload]
    ) -> None:
        touched: list[FetchSession] = []
        now = trio.current_time()
        if presences:
            routed: dict[FetchSession, list[BlockPresence]] = {}
            for presence in presences:
                for fetch in self._wanted.get(presence.cid.multihash, ()):
                    if fetch.has_peer(peer):
                        routed.setdefault(fetch, []).append(presence)
            for fetch, items in routed.items():
                fetch.session.on_message(peer, Message(presences=tuple(items)), now)
                touched.append(fetch)
        if payloads:
            if sum(len(p.data) for p in payloads) <= _HASH_INLINE:
                cids = _payload_cids(payloads)
            else:
                cids = await trio.to_thread.run_sync(_payload_cids, payloads)
            now = trio.current_time()
            for payload, cid in zip(payloads, cids, strict=True):
                targets = [
                    f for f in self._wanted.get(cid.multihash, ()) if f.has_peer(peer)
                ] if cid is not None else []  # fmt: skip
                if cid is not None and targets:
                    self.stats["blocks_received"] += 1
                    for fetch in targets:
                        fetch.session.on_verified_block(peer, cid, payload.data, now)
                        if fetch not in touched:
                            touched.append(fetch)
                    continue
                suspects = [f for f in self._sessions if f.asked(peer)]
                if not suspects:
                    self.stats["blocks_unwanted"] += 1
                    continue
                self.stats["blocks_bad"] += 1
                log.info("%s sent a block nobody asked for (corrupt?)", peer)
                for fetch in suspects:
                    fetch.session.report_bad(peer, now)
                    if fetch not in touched:
                        touched.append(fetch)
        for fetch in touched:
            await fetch.pump()
            fetch.wake()
