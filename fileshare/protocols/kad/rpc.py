"""Outbound /ipfs/kad/1.0.0 requests over streams, with a small pool of reusable streams per peer.

A request is one uvarint-length-prefixed ``Message``; the answer is the next message on the same
stream. After a clean exchange the stream goes back to the pool (at most
``KAD_MAX_IDLE_STREAMS_PER_PEER`` per peer, for ``KAD_OUTBOUND_IDLE`` seconds), so a lookup that
asks the same peer again skips stream negotiation. A pooled stream the remote has meanwhile closed
is detected on use and the request is retried once on a fresh stream. Any error, timeout or
cancellation during a request resets its stream (the spec: "on any error, the stream is reset").

ADD_PROVIDER is sent on a stream of its own: some implementations echo it, others never answer, so
we half-close, wait up to ``KAD_PROVIDE_ACK_TIMEOUT`` for an echo or EOF and close the stream.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import trio
from multiaddr import Multiaddr

from ...errors import ProtocolError
from ...identity.peerid import PeerId
from ...limits import (
    KAD_MAX_IDLE_STREAMS_PER_PEER,
    KAD_MAX_MESSAGE,
    KAD_OUTBOUND_IDLE,
    KAD_PROVIDE_ACK_TIMEOUT,
    KAD_RPC_TIMEOUT,
)
from ...net.host import Host, NetStream
from ...net.upgrade import STREAM_FAILURES
from ...wire.protobuf import LengthPrefixedDecoder, length_prefixed
from .messages import PROTOCOL_ID, Message, MessageType, decode_message, encode_message

log = logging.getLogger("fileshare.protocols.kad")

_READ_CHUNK = 64 * 1024


class RpcError(ProtocolError):
    """A DHT request failed: unreachable peer, timeout, reset stream or invalid answer."""


@dataclass(slots=True)
class _OutStream:
    stream: NetStream
    decoder: LengthPrefixedDecoder
    idle_since: float = 0.0


async def read_message(stream: NetStream, decoder: LengthPrefixedDecoder) -> Message | None:
    """The next message on ``stream`` (None at a clean EOF between messages).

    Raises ``DecodeError``/``LimitExceeded`` for a malformed message or a half-received one at EOF.
    """
    data = b""  # first look at what the decoder already holds
    while True:
        frames = decoder.feed(data)
        if frames:
            if len(frames) > 1 or decoder.buffered:
                raise ProtocolError("peer sent more than one DHT message for one request")
            return decode_message(frames[0])
        data = await stream.receive_some(_READ_CHUNK)
        if not data:
            if decoder.buffered:
                raise ProtocolError("DHT stream ended inside a message")
            return None


async def _close_quietly(stream: NetStream) -> None:
    with contextlib.suppress(*STREAM_FAILURES), trio.move_on_after(1.0):
        await stream.aclose()


class KadRpc:
    """Sends requests to peers on ``host``; see the module docstring."""

    def __init__(self, host: Host, *, timeout: float = KAD_RPC_TIMEOUT) -> None:
        self.host = host
        self.timeout = timeout
        self._idle: dict[PeerId, list[_OutStream]] = {}
        self.sent = 0
        self.failed = 0

    async def request(
        self,
        peer: PeerId,
        msg: Message,
        addrs: Iterable[Multiaddr] = (),
        *,
        timeout: float | None = None,
    ) -> Message:
        """Send ``msg`` to ``peer`` and return its answer; ``RpcError`` on any failure."""
        frame = length_prefixed(encode_message(msg))
        self.sent += 1
        try:
            with trio.fail_after(self.timeout if timeout is None else timeout):
                for _ in range(2):
                    out = self._take(peer)
                    fresh = out is None
                    if out is None:
                        out = await self._open(peer, addrs)
                    try:
                        await out.stream.send_all(frame)
                        answer = await read_message(out.stream, out.decoder)
                        if answer is None:
                            raise ProtocolError("stream closed before the answer")
                    except BaseException as exc:
                        await out.stream.reset()
                        if fresh or not isinstance(exc, STREAM_FAILURES):
                            raise
                        continue  # the pooled stream went stale: retry once on a fresh one
                    self._give(peer, out)
                    return answer
        except trio.TooSlowError:
            self.failed += 1
            raise RpcError(f"{peer}: no DHT answer within the timeout") from None
        except STREAM_FAILURES as exc:
            self.failed += 1
            raise RpcError(f"{peer}: DHT request failed: {exc or type(exc).__name__}") from exc
        raise AssertionError("unreachable")

    async def send_add_provider(
        self, peer: PeerId, msg: Message, addrs: Iterable[Multiaddr] = ()
    ) -> bool:
        """Send an ADD_PROVIDER on its own stream; True once it was delivered (see module doc)."""
        if msg.type != MessageType.ADD_PROVIDER:
            raise ValueError("send_add_provider sends ADD_PROVIDER messages only")
        frame = length_prefixed(encode_message(msg))
        self.sent += 1
        try:
            with trio.fail_after(self.timeout):
                out = await self._open(peer, addrs)
                try:
                    await out.stream.send_all(frame)
                    with contextlib.suppress(*STREAM_FAILURES):
                        await out.stream.send_eof()
                except BaseException:
                    await out.stream.reset()
                    raise
            # delivered; an echo (or EOF) is optional
            with trio.move_on_after(KAD_PROVIDE_ACK_TIMEOUT):
                with contextlib.suppress(*STREAM_FAILURES):
                    await read_message(out.stream, out.decoder)
            await _close_quietly(out.stream)
            return True
        except STREAM_FAILURES as exc:
            self.failed += 1
            log.debug("ADD_PROVIDER to %s failed: %s", peer, exc or type(exc).__name__)
            return False

    def expire_idle(self, now: float) -> None:
        """Forget pooled streams idle for longer than ``KAD_OUTBOUND_IDLE`` (they are reset)."""
        for peer in list(self._idle):
            keep = []
            for out in self._idle[peer]:
                if now - out.idle_since < KAD_OUTBOUND_IDLE and not out.stream.connection.closed:
                    keep.append(out)
                else:
                    self.host.nursery.start_soon(out.stream.reset)
            if keep:
                self._idle[peer] = keep
            else:
                del self._idle[peer]

    def forget(self, peer: PeerId) -> None:
        """Drop the pooled streams of ``peer`` (its connection closed)."""
        for out in self._idle.pop(peer, []):
            self.host.nursery.start_soon(out.stream.reset)

    def idle_streams(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def _open(self, peer: PeerId, addrs: Iterable[Multiaddr]) -> _OutStream:
        addrs = list(addrs)
        if not self.host.is_connected(peer):
            await self.host.dial(peer, addrs or None)
        stream, _ = await self.host.new_stream(peer, [PROTOCOL_ID])
        return _OutStream(stream, LengthPrefixedDecoder(KAD_MAX_MESSAGE))

    def _take(self, peer: PeerId) -> _OutStream | None:
        pool = self._idle.get(peer)
        while pool:
            out = pool.pop()
            if not out.stream.connection.closed:
                if not pool:
                    del self._idle[peer]
                return out
        self._idle.pop(peer, None)
        return None

    def _give(self, peer: PeerId, out: _OutStream) -> None:
        pool = self._idle.setdefault(peer, [])
        if len(pool) >= KAD_MAX_IDLE_STREAMS_PER_PEER:
            self.host.nursery.start_soon(_close_quietly, out.stream)
            return
        out.idle_since = trio.current_time()
        pool.append(out)
