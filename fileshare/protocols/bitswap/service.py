"""The trio driver of bitswap: streams, the server (``DecisionEngine``) and fetch sessions.

Per connected peer we keep ONE outbound stream (a ``_Link``), opened on first need with the first
of ``PROTOCOLS`` the peer accepts. Its writer task sends, in this order, our queued wants (from
fetch sessions) and then our answers to the peer's wants. A loader task beside it loads (and
verifies) the blocks of the next response from the store in a worker thread while the writer
sends the previous one, so memory holds at most two responses per peer, whatever the file size.

Inbound streams carry the peer's messages (uvarint-length-prefixed, at most
``BITSWAP_MAX_MESSAGE``); a message that does not decode closes that stream with a logged reason
and counts against the peer in every session it serves. Wants and presences are handled before
the next message is read. Payloads are hashed in a worker thread, routed to the sessions that
asked for them and written, in a task of their own: up to ``_DELIVERIES`` messages per stream at
once, then reading waits, so a slow disk slows the sender through yamux flow control instead of
filling memory.

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
import ctypes
import ctypes.util
import functools
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager

import trio

from ...content.blockstore import Blockstore
from ...content.cid import CID
from ...errors import DecodeError, LimitExceeded, NotFound, VerificationError
from ...identity.peerid import PeerId
from ...limits import BITSWAP_MAX_MESSAGE, BITSWAP_MAX_WANTLIST_ENTRIES, KIB, NEGOTIATION_TIMEOUT
from ...net.host import Connection, Host, NetStream
from ...net.upgrade import STREAM_FAILURES
from ...wire.varint import try_decode_varint
from .client import FetchSession, FileOutput
from .messages import (
    PROTOCOL_1_2_0,
    PROTOCOLS,
    BlockPresence,
    Message,
    Payload,
    WantEntry,
    Wantlist,
    block_matches,
    decode_message,
    encode_frame,
)
from .server import DecisionEngine, Response
from .session_types import SessionConfig

__all__ = ["BitswapService"]

log = logging.getLogger("fileshare.protocols.bitswap")

_READ_CHUNK = 256 * KIB
_HASH_INLINE = 64 * KIB  # payload bytes hashed on the trio thread; more go to a worker thread
_DELIVERIES = 4  # messages with payloads being hashed/written per inbound stream at once
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
_MMAP_THRESHOLD = 2 * BITSWAP_MAX_MESSAGE + 64 * KIB  # larger buffers are still mmapped
_TRIM_THRESHOLD = 16 * 1024 * KIB  # free heap kept for reuse before it is given back
# End game: copy a block to an idle peer only if it should arrive in under a quarter of the time
# its holder still needs (the session's default, a half, cost ~2-6 % duplicate bytes across four
# equally capped providers in bench/fetch.py; this keeps copies for really slow holders).
ENDGAME_MARGIN = 0.25
_STREAM_ERRORS = STREAM_FAILURES


@functools.cache
def _keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed block-sized buffers instead of unmapping them.

    Every block passes through a few 1-4 MiB buffers. By default glibc serves those with mmap (or
    trims them off the heap) and every reuse page-faults 256 fresh zeroed pages per MiB again: that
    was most of a fetcher's system time (see bench/RESULTS.md). Buffers up to ``_MMAP_THRESHOLD``
    now come from the heap and up to ``_TRIM_THRESHOLD`` of free heap is kept. No-op elsewhere.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = int(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) == 1
    return int(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)) == 1 and ok


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
        return self._blocks.size_sync(mh)

    def has(self, cid: CID) -> bool:
        return self.size(cid) is not None


def _stat_sizes(blocks: Blockstore, cids: Sequence[CID]) -> dict[bytes, int | None]:
    return blocks.sizes_sync(c.multihash for c in cids)


def _load_response(blocks: Blockstore, resp: Response[PeerId]) -> bytes:
    """Worker thread: read (and verify) a response's blocks and encode the framed message."""
    datas: list[bytes | None] = []
    for cid in resp.cids:
        try:
            data = blocks.get_sync(cid, verify=False)
            if not block_matches(cid, data):
                raise VerificationError(f"block {cid} is corrupt in the store")
            datas.append(data)
        except NotFound:
            datas.append(None)
        except VerificationError as exc:
            log.warning("not serving %s: %s", cid, exc)
            datas.append(None)
    return encode_frame(resp.message(datas))


class _FrameReader:
    """Splits a stream into uvarint-length-prefixed messages, copying each body once.

    A declared length over ``max_size`` raises ``LimitExceeded`` before the body is buffered.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._chunks: deque[memoryview] = deque()
        self._have = 0
        self._need: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if data:
            self._chunks.append(memoryview(data))
            self._have += len(data)
        out: list[bytes] = []
        while True:
            if self._need is None:
                if not self._have:
                    break
                first = self._chunks[0]
                if len(first) < 10 and len(self._chunks) > 1:
                    first = memoryview(b"".join(self._chunks))  # a header split across chunks
                    self._chunks.clear()
                    self._chunks.append(first)
                head = try_decode_varint(first)
                if head is None:
                    break
                length, pos = head
                if length > self.max_size:
                    raise LimitExceeded(f"message of {length} bytes exceeds limit {self.max_size}")
                self._chunks[0] = first[pos:]
                self._have -= pos
                self._need = length
            need = self._need
            if self._have < need:
                break
            pieces: list[memoryview] = []
            left = need
            while left:
                chunk = self._chunks[0]
                if len(chunk) <= left:
                    pieces.append(self._chunks.popleft())
                    left -= len(chunk)
                else:
                    pieces.append(chunk[:left])
                    self._chunks[0] = chunk[left:]
                    left = 0
            while self._chunks and not self._chunks[0]:
                self._chunks.popleft()
            out.append(b"".join(pieces))
            self._have -= need
            self._need = None
        return out


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
        self.wake = trio.Event()  # for the writer: wants queued or a response loaded
        self.work = trio.Event()  # for the loader: the engine may have work, or the slot is free
        self.frame: bytes | None = None  # the next loaded response, waiting for the writer
        self.error: BaseException | None = None  # why the loader stopped (the writer raises it)
        self.ready = trio.Event()  # set once the stream is open (or could not be opened)
        self.protocol: str | None = None
        self.closed = False
        self.scope = trio.CancelScope()

    def kick(self) -> None:
        self.wake.set()
        self.work.set()


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
        _keep_freed_memory()
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
        self,
        root: CID,
        config: SessionConfig | None = None,
        *,
        accept_new_peers: bool = True,
        output: FileOutput | None = None,
    ) -> AsyncIterator[FetchSession]:
        """A fetch session for the DAG under ``root``; ``accept_new_peers`` adds every peer that
        connects meanwhile (probed with want-have); ``output`` gets the file's bytes as verified
        blocks arrive (see ``FetchSession.output``)."""
        fetch = FetchSession(self, root, config or self.session_config, output)
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
        ended: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._load_loop, link)
            try:
                await self._send_loop(link, stream)
            except _STREAM_ERRORS as exc:
                ended = exc  # re-raised outside the nursery, as itself (not in a group)
            nursery.cancel_scope.cancel()
        if ended is not None:
            raise ended

    async def _send_loop(self, link: _Link, stream: NetStream) -> None:
        while True:
            if link.error is not None:
                raise link.error
            if link.wants:
                entries = link.wants[:BITSWAP_MAX_WANTLIST_ENTRIES]
                del link.wants[:BITSWAP_MAX_WANTLIST_ENTRIES]
                await stream.send_all(encode_frame(Message(wantlist=Wantlist(tuple(entries)))))
                self.stats["want_messages_sent"] += 1
                continue
            if link.frame is not None:
                frame, link.frame = link.frame, None
                link.work.set()  # the slot is free: load the next one meanwhile
                await stream.send_all(frame)
                self.stats["responses_sent"] += 1
                self.stats["response_bytes_sent"] += len(frame)
                continue
            await link.wake.wait()
            link.wake = trio.Event()

    async def _load_loop(self, link: _Link) -> None:
        """Load the peer's next response while the writer sends the previous one."""
        try:
            await self._load_responses(link)
        except _STREAM_ERRORS as exc:
            link.error = exc
            link.wake.set()

    async def _load_responses(self, link: _Link) -> None:
        while True:
            if link.frame is None:
                if self.send_rate is not None and trio.current_time() < self._send_at:
                    # rate cap: wait before committing to a response, so cancels still count
                    await trio.sleep_until(self._send_at)
                    continue
                resp = self.engine.next_response(link.peer)
                if resp is not None:
                    frame = await trio.to_thread.run_sync(_load_response, self.blocks, resp)
                    self._charge(len(frame))
                    link.frame = frame
                    link.wake.set()
                    continue
            await link.work.wait()
            link.work = trio.Event()

    def _charge(self, nbytes: int) -> None:
        """Rate cap: the next response waits until these bytes are paid for at ``send_rate``."""
        if self.send_rate is not None:
            self._send_at = max(trio.current_time(), self._send_at) + nbytes / self.send_rate

    # --- inbound stream ---

    async def _handle_inbound(self, stream: NetStream, conn: Connection) -> None:
        peer = conn.remote_peer
        protocol = stream.protocol or PROTOCOL_1_2_0
        ended: BaseException | None = None
        async with trio.open_nursery() as nursery:  # payloads being hashed and written
            try:
                await self._read_messages(stream, peer, protocol, nursery)
            except _STREAM_ERRORS as exc:
                ended = exc  # raised once the deliveries are done (the host logs and resets)
        if ended is not None:
            raise ended

    async def _read_messages(
        self, stream: NetStream, peer: PeerId, protocol: str, nursery: trio.Nursery
    ) -> None:
        reader = _FrameReader(BITSWAP_MAX_MESSAGE)
        deliveries = trio.Semaphore(_DELIVERIES)
        while True:
            data = await stream.receive_some(_READ_CHUNK)
            if not data:
                return
            try:
                frames = reader.feed(data)
            except (DecodeError, LimitExceeded) as exc:
                await self._bad_stream(stream, peer, exc)
                return
            del data
            for frame in frames:
                try:
                    msg = decode_message(frame)
                except (DecodeError, LimitExceeded) as exc:
                    await self._bad_stream(stream, peer, exc)
                    return
                del frame
                payloads = await self._on_message(peer, msg, protocol)
                del msg
                if payloads:
                    await deliveries.acquire()
                    nursery.start_soon(self._deliver_payloads, peer, payloads, deliveries)
                del payloads

    async def _deliver_payloads(
        self, peer: PeerId, payloads: list[Payload], done: trio.Semaphore
    ) -> None:
        try:
            await self._deliver(peer, (), payloads)
        finally:
            done.release()

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

    async def _on_message(self, peer: PeerId, msg: Message, protocol: str) -> list[Payload]:
        """Handle wants and presences; return the payloads (for ``_deliver``)."""
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
        if msg.presences:
            await self._deliver(peer, msg.presences, [])
        return msg.all_payloads()

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
