"""The trio driver of the gossipsub router: streams, per-peer send queues, heartbeat, subscriptions.

On every connection to a peer that speaks pubsub we open ONE outbound stream for our RPCs
(``/meshsub/1.2.0``, ``1.1.0``, ``1.0.0`` or ``/floodsub/1.0.0``, first accepted) and read the
peer's inbound stream. Frames for a peer go through a bounded queue drained by that peer's writer
task: when a slow peer's queue is full the frame is dropped and counted, so the router never waits
on one peer. A frame that fails to decode closes the stream it came on (logged, and a behaviour
penalty for the peer).

    pubsub = PubsubService(host)
    messages = pubsub.subscribe("topic")
    await pubsub.publish("topic", b"hello")
    async for delivered in messages: ...
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import Counter

import trio

from ...errors import DecodeError, FileshareError, LimitExceeded
from ...identity.keys import PrivateKey
from ...identity.peerid import PeerId
from ...limits import (
    NEGOTIATION_TIMEOUT,
    PUBSUB_MAX_MESSAGE,
    PUBSUB_PEER_QUEUE_BYTES,
    PUBSUB_PEER_QUEUE_FRAMES,
    PUBSUB_PX_DIAL_TIMEOUT,
    PUBSUB_PX_DIALS,
    PUBSUB_SUBSCRIBER_BUFFER,
)
from ...net.host import Connection, Host, NetStream
from ...net.upgrade import STREAM_FAILURES
from ...wire.protobuf import LengthPrefixedDecoder, length_prefixed
from .router import Delivered, GossipConfig, GossipRouter, Output, Validator
from .rpc import PROTOCOLS, RPC, encode_rpc
from .score import ScoreParams

__all__ = ["PubsubService"]

log = logging.getLogger("fileshare.protocols.pubsub")

_READ_CHUNK = 64 * 1024
_COALESCE = 256 * 1024  # bytes of queued frames written with one send_all
_STREAM_ERRORS = STREAM_FAILURES


class _Session:
    """One pubsub peer: its connection, outbound queue and the cancel scopes of its tasks."""

    def __init__(self, peer: PeerId, conn: Connection) -> None:
        self.peer = peer
        self.conn = conn
        self.send, self.recv = trio.open_memory_channel[bytes](PUBSUB_PEER_QUEUE_FRAMES)
        self.queued_bytes = 0
        self.dropped = 0
        self.added = False  # the router knows the peer
        self.writer_scope = trio.CancelScope()
        self.reader_scope: trio.CancelScope | None = None


class PubsubService:
    """Gossipsub on a Host. Tasks run in the host's nursery and end with it."""

    def __init__(
        self,
        host: Host,
        key: PrivateKey | None = None,
        config: GossipConfig | None = None,
        *,
        score_params: ScoreParams | None = None,
        rng: random.Random | None = None,
        dial_px: bool = True,
        subscriber_buffer: int = PUBSUB_SUBSCRIBER_BUFFER,
    ) -> None:
        self.host = host
        self.router = GossipRouter(key or host.key, config, score_params, rng)
        self.config = self.router.config
        self.stats: Counter[str] = Counter()
        self.dial_px = dial_px
        self.subscriber_buffer = subscriber_buffer
        self._sessions: dict[PeerId, _Session] = {}
        self._subs: dict[str, list[trio.MemorySendChannel[Delivered]]] = {}
        self._px_inflight: set[PeerId] = set()
        self._relays: set[str] = set()  # topics joined without a local reader
        for proto in PROTOCOLS:
            host.set_stream_handler(proto, self._handle_inbound)
        host.on_connect(self._on_connect)
        host.on_disconnect(self._on_disconnect)
        host.nursery.start_soon(self._heartbeat_loop)

    # --- application API ---

    def subscribe(self, topic: str) -> trio.MemoryReceiveChannel[Delivered]:
        """Join ``topic``; new messages arrive on the returned channel (bounded: overflow drops).

        Closing the channel ends this subscription; the topic is left when none remain.
        """
        send, recv = trio.open_memory_channel[Delivered](self.subscriber_buffer)
        self._subs.setdefault(topic, []).append(send)
        self._dispatch(self.router.subscribe(topic, trio.current_time()))
        return recv

    def relay(self, topic: str) -> None:
        """Join ``topic`` only to forward its messages (validators still run); no local reader."""
        self._relays.add(topic)
        self._dispatch(self.router.subscribe(topic, trio.current_time()))

    def unsubscribe(self, topic: str) -> None:
        """Leave ``topic`` and close every channel subscribed to it."""
        self._relays.discard(topic)
        for send in self._subs.pop(topic, []):
            send.close()
        self._dispatch(self.router.unsubscribe(topic, trio.current_time()))

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Sign and send ``data`` on ``topic`` (subscribed or not); returns the message id."""
        msg_id, out = self.router.publish(topic, data, trio.current_time())
        self._dispatch(out)
        await trio.lowlevel.checkpoint()
        return msg_id

    def set_validator(self, topic: str, validator: Validator | None) -> None:
        """Run ``validator`` on every new message of ``topic`` before delivery and forwarding."""
        self.router.set_validator(topic, validator)

    def topic_peers(self, topic: str) -> list[PeerId]:
        """Connected pubsub peers that told us they subscribe to ``topic``."""
        return sorted(p for p in self.router.peers() if topic in self.router.peer_topics(p))

    async def wait_for_topic_peers(self, topic: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait (bounded) until ``count`` peers subscribe to ``topic``; True if they did."""
        with trio.move_on_after(timeout):
            while len(self.topic_peers(topic)) < count:
                await trio.sleep(0.02)
            return True
        return False

    def queue_dropped(self, peer: PeerId) -> int:
        """Frames dropped for ``peer`` because its outbound queue was full."""
        session = self._sessions.get(peer)
        return session.dropped if session else 0

    # --- output dispatch ---

    def _dispatch(self, out: Output) -> None:
        for peer, rpc in out.sends:
            self._enqueue(peer, rpc)
        for delivered in out.delivered:
            self._deliver(delivered)
        if out.px and self.dial_px:
            self._dial_px(out)

    def _enqueue(self, peer: PeerId, rpc: RPC) -> None:
        session = self._sessions.get(peer)
        if session is None:
            self.stats["send_no_session"] += 1
            return
        frame = length_prefixed(encode_rpc(rpc))
        if session.queued_bytes + len(frame) > PUBSUB_PEER_QUEUE_BYTES:
            self._drop_frame(session)
            return
        try:
            session.send.send_nowait(frame)
        except trio.WouldBlock:
            self._drop_frame(session)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.stats["send_closed"] += 1
            return
        session.queued_bytes += len(frame)

    def _drop_frame(self, session: _Session) -> None:
        session.dropped += 1
        self.stats["send_queue_full"] += 1
        if session.dropped in (1, 100) or session.dropped % 10_000 == 0:
            log.warning("pubsub peer %s is slow: %d frames dropped", session.peer, session.dropped)

    def _deliver(self, delivered: Delivered) -> None:
        channels = self._subs.get(delivered.topic, [])
        for send in list(channels):
            try:
                send.send_nowait(delivered)
            except trio.WouldBlock:
                self.stats["delivery_dropped"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                channels.remove(send)
        if not channels and delivered.topic in self._subs:
            del self._subs[delivered.topic]
            if delivered.topic in self._relays:
                return
            self._dispatch(self.router.unsubscribe(delivered.topic, trio.current_time()))

    def _dial_px(self, out: Output) -> None:
        for info in out.px:
            if len(self._px_inflight) >= PUBSUB_PX_DIALS or info.peer_id is None:
                continue
            try:
                peer = PeerId.from_bytes(info.peer_id)
            except DecodeError:
                continue
            if peer == self.host.peer_id or peer in self._px_inflight:
                continue
            if self.host.is_connected(peer) or not self.host.peerstore.addrs(peer):
                continue  # signed peer records are not parsed: only peers we have addresses for
            self._px_inflight.add(peer)
            self.host.nursery.start_soon(self._px_dial, peer)

    async def _px_dial(self, peer: PeerId) -> None:
        try:
            with trio.move_on_after(PUBSUB_PX_DIAL_TIMEOUT):
                await self.host.dial(peer)
                self.stats["px_dialled"] += 1
        except FileshareError as exc:
            log.debug("peer-exchange dial of %s failed: %s", peer, exc)
        finally:
            self._px_inflight.discard(peer)

    # --- heartbeat ---

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await trio.sleep(interval)
            self._dispatch(self.router.heartbeat(trio.current_time()))

    # --- peers and streams ---

    def _ensure_session(self, conn: Connection) -> _Session:
        session = self._sessions.get(conn.remote_peer)
        if session is None:
            session = self._sessions[conn.remote_peer] = _Session(conn.remote_peer, conn)
            self.host.nursery.start_soon(self._run_outbound, session)
        return session

    def _add_to_router(self, session: _Session, protocol: str) -> None:
        if session.added:
            return
        session.added = True
        outbound = session.conn.direction == "outbound"
        self._dispatch(self.router.add_peer(session.peer, protocol, outbound, trio.current_time()))

    def _end_session(self, session: _Session) -> None:
        if self._sessions.get(session.peer) is not session:
            return
        del self._sessions[session.peer]
        session.writer_scope.cancel()
        if session.reader_scope is not None:
            session.reader_scope.cancel()
        session.send.close()
        if session.added:
            self.router.remove_peer(session.peer, trio.current_time())

    async def _on_connect(self, conn: Connection) -> None:
        self._ensure_session(conn)

    async def _on_disconnect(self, conn: Connection) -> None:
        session = self._sessions.get(conn.remote_peer)
        if session is not None and session.conn is conn:
            self._end_session(session)
        other = self.host.connection_to(conn.remote_peer)
        if other is not None:
            self._ensure_session(other)

    async def _run_outbound(self, session: _Session) -> None:
        """Open our stream to the peer and write its queue until the session ends."""
        stream: NetStream | None = None
        try:
            with session.writer_scope:
                try:
                    with trio.fail_after(NEGOTIATION_TIMEOUT):
                        stream, protocol = await session.conn.open_stream(list(PROTOCOLS))
                except _STREAM_ERRORS as exc:
                    log.debug("no pubsub stream to %s: %s", session.peer, exc or type(exc).__name__)
                    return
                self._add_to_router(session, protocol)
                await self._write_loop(session, stream)
        except _STREAM_ERRORS as exc:
            log.info("pubsub stream to %s ended: %s", session.peer, exc or type(exc).__name__)
            if stream is not None:
                await stream.reset()
                stream = None
        finally:
            self._end_session(session)
            if stream is not None:
                with trio.move_on_after(1.0) as scope:
                    scope.shield = True
                    with contextlib.suppress(Exception):
                        await stream.aclose()

    async def _write_loop(self, session: _Session, stream: NetStream) -> None:
        async for frame in session.recv:
            parts, size = [frame], len(frame)
            while size < _COALESCE:
                try:
                    more = session.recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                parts.append(more)
                size += len(more)
            session.queued_bytes -= size
            await stream.send_all(b"".join(parts) if len(parts) > 1 else frame)

    async def _handle_inbound(self, stream: NetStream, conn: Connection) -> None:
        """Read the peer's RPC stream; a newer inbound stream from the same peer replaces it."""
        session = self._ensure_session(conn)
        self._add_to_router(session, stream.protocol or PROTOCOLS[0])
        if session.reader_scope is not None:
            session.reader_scope.cancel()
        peer = conn.remote_peer
        decoder = LengthPrefixedDecoder(PUBSUB_MAX_MESSAGE)
        with trio.CancelScope() as scope:
            session.reader_scope = scope
            while True:
                data = await stream.receive_some(_READ_CHUNK)
                if not data:
                    return
                try:
                    frames = decoder.feed(data)
                except LimitExceeded as exc:
                    self.router.add_penalty(peer)  # oversized length prefix: nothing decoded
                    await self._close_bad(stream, peer, exc)
                    return
                for frame in frames:
                    try:
                        out = self.router.handle_frame(peer, frame, trio.current_time())
                    except (DecodeError, LimitExceeded) as exc:  # the router penalised the peer
                        await self._close_bad(stream, peer, exc)
                        return
                    self._dispatch(out)

    async def _close_bad(self, stream: NetStream, peer: PeerId, exc: Exception) -> None:
        self.stats["bad_frame"] += 1
        log.warning("closing pubsub stream from %s: bad RPC frame: %s", peer, exc)
        await stream.reset()
