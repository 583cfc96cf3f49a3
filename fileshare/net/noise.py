"""Noise secure channel (libp2p ``/noise``): trio driver for the handshake, and ``SecureStream``.

After the XX handshake (``noise_handshake.NoiseHandshake``) every message is
``uint16_be(len) || ChaCha20-Poly1305(plaintext)``, at most 65535 bytes including the 16-byte tag.
Large writes go out as full frames, several per ``send_all`` on the transport, encrypted in place
into one buffer; received bytes are decrypted frame by frame straight from the receive buffer.

Timeouts: neither ``secure_outbound`` nor ``secure_inbound`` has one of its own. A peer that stalls
the handshake blocks them until the caller's cancel scope fires, e.g.
``with trio.fail_after(NEGOTIATION_TIMEOUT): s = await secure_outbound(...)``.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import NoReturn

import trio
from cryptography.exceptions import InvalidTag

from ..identity.keys import PrivateKey, PublicKey
from ..identity.peerid import PeerId
from ..limits import NOISE_MAX_FRAME
from .buffered import BufferedStream
from .noise_handshake import (
    MAX_NONCE,
    TAG_LEN,
    CipherState,
    HandshakeError,
    HandshakeResult,
    NoiseError,
    NoiseHandshake,
)

__all__ = [
    "NOISE_PROTOCOL_ID",
    "HandshakeError",
    "NoiseError",
    "NoiseHandshake",
    "SecureStream",
    "secure_inbound",
    "secure_outbound",
]

NOISE_PROTOCOL_ID = "/noise"

_NONCE = struct.Struct("<4xQ")
_LEN = struct.Struct(">H")
_FRAMES_PER_SEND = 4  # full frames encrypted into one buffer per transport send_all
_RECV_SIZE = 256 * 1024
_HANDSHAKE_READ = 64 * 1024


class SecureStream(trio.abc.HalfCloseableStream):
    """An authenticated, encrypted stream over a transport, after a completed handshake.

    ``send_all`` and ``receive_some`` may run concurrently in two tasks, but not each twice.
    """

    def __init__(
        self,
        transport: BufferedStream,
        result: HandshakeResult,
        local_peer: PeerId,
        *,
        max_frame: int = NOISE_MAX_FRAME,
    ) -> None:
        if not TAG_LEN < max_frame <= NOISE_MAX_FRAME:
            raise ValueError("max_frame out of range")
        self.transport = transport
        self.remote_public_key: PublicKey = result.remote_public_key
        self.remote_peer: PeerId = result.remote_peer
        self.local_peer = local_peer
        self.remote_muxers: tuple[str, ...] = result.remote_muxers
        self._max_frame = max_frame
        self._max_plain = max_frame - TAG_LEN
        self._send: CipherState = result.send_cipher
        self._recv: CipherState = result.recv_cipher
        self._send_busy = False
        self._recv_busy = False
        self._send_broken = False
        self._recv_error: Exception | None = None
        self._eof = False
        self._closed = False
        self._rbuf = bytearray()
        self._pending: deque[bytes] = deque()
        self._pending_pos = 0
        self._big_out: bytearray | None = None

    # --- sending ---
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._send_broken:
            raise trio.BrokenResourceError("an earlier send failed; the stream is unusable")
        self._send_busy = True
        try:
            with memoryview(data) as view:
                if view.itemsize != 1 or view.ndim != 1:
                    raise TypeError("send_all needs a contiguous byte buffer")
                total = len(view)
                if total == 0:
                    await trio.lowlevel.checkpoint()
                    return
                try:
                    await self._send_frames(view, total)
                except BaseException:
                    self._send_broken = True
                    raise
        finally:
            self._send_busy = False

    async def _send_frames(self, view: memoryview, total: int) -> None:
        aead = self._send.aead
        assert aead is not None
        max_plain = self._max_plain
        batch_plain = max_plain * _FRAMES_PER_SEND
        pos = 0
        while pos < total:
            size = min(total - pos, batch_plain)
            nframes = -(-size // max_plain)
            out_len = size + nframes * (2 + TAG_LEN)
            if nframes > 1:
                if self._big_out is None:
                    self._big_out = bytearray(batch_plain + _FRAMES_PER_SEND * (2 + TAG_LEN))
                out = self._big_out
            else:
                out = bytearray(out_len)
            n = self._send.n
            if n + nframes >= MAX_NONCE:
                raise NoiseError("Noise nonce space exhausted")
            with memoryview(out) as ov:
                o = 0
                end = pos + size
                while pos < end:
                    k = min(end - pos, max_plain)
                    _LEN.pack_into(out, o, k + TAG_LEN)
                    aead.encrypt_into(
                        _NONCE.pack(n), view[pos : pos + k], None, ov[o + 2 : o + 2 + k + TAG_LEN]
                    )
                    n += 1
                    o += k + 2 + TAG_LEN
                    pos += k
                self._send.n = n
                await self.transport.send_all(ov[:out_len] if out_len != len(out) else out)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Noise has no close message: half-close the transport."""
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        await self.transport.send_eof()

    # --- receiving ---
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._recv_busy:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        self._recv_busy = True
        try:
            if not self._pending:
                if self._recv_error is not None:
                    raise self._recv_error
                while not self._pending and not self._eof:
                    await self._fill()
                if not self._pending:
                    return b""
            else:
                await trio.lowlevel.checkpoint()
            return self._take_pending(max_bytes)
        finally:
            self._recv_busy = False

    def _take_pending(self, max_bytes: int | None) -> bytes:
        pending = self._pending
        first = pending[0]
        start = self._pending_pos
        avail = len(first) - start
        limit = _RECV_SIZE if max_bytes is None else max_bytes
        if limit >= avail:
            pending.popleft()
            self._pending_pos = 0
            head = first if start == 0 else first[start:]
            if not pending or limit < avail + len(pending[0]):
                return head
            # Several whole frames are waiting: hand them over in one piece, so the layer above
            # (yamux) pays its per-read cost once per batch instead of once per 64 KiB frame.
            parts = [head]
            size = avail
            while pending and size + len(pending[0]) <= limit:
                frame = pending.popleft()
                parts.append(frame)
                size += len(frame)
            return b"".join(parts)
        self._pending_pos = start + limit
        return first[start : start + limit]

    async def _fill(self) -> None:
        want = _RECV_SIZE
        if len(self._rbuf) >= 2:
            want = max(want, ((self._rbuf[0] << 8) | self._rbuf[1]) + 2 - len(self._rbuf))
        chunk = await self.transport.receive_some(want)
        if not chunk:
            if self._rbuf:
                self._fail(NoiseError("connection closed in the middle of a Noise frame"))
            self._eof = True
            return
        start = 0
        rbuf = self._rbuf
        if rbuf:
            # complete the partial frame with just the bytes it lacks, then work on ``chunk``
            if len(rbuf) < 2:
                rbuf += chunk[:1]
                start = 1
            need = ((rbuf[0] << 8) | rbuf[1]) + 2 - len(rbuf)
            if len(chunk) - start < need:
                rbuf += chunk[start:] if start else chunk
                if len(rbuf) >= 2:
                    self._check_header(rbuf)
                return
            with memoryview(chunk) as cv:
                rbuf += cv[start : start + need]
            start += need
            self._rbuf = bytearray()
            try:
                self._decrypt_frames(rbuf, 0)
            except NoiseError as exc:
                self._fail(exc)
        try:
            pos = self._decrypt_frames(chunk, start)
        except NoiseError as exc:
            self._fail(exc)
        if pos < len(chunk):
            with memoryview(chunk) as cv:
                self._rbuf = bytearray(cv[pos:])

    def _check_header(self, buf: bytearray) -> None:
        length = (buf[0] << 8) | buf[1]
        if length > self._max_frame or length < TAG_LEN:
            self._fail(NoiseError(f"invalid Noise frame length {length}"))

    def _decrypt_frames(self, data: bytes | bytearray, pos: int) -> int:
        """Decrypt every complete frame in ``data[pos:]``; return the offset after the last one."""
        aead = self._recv.aead
        assert aead is not None
        pending = self._pending
        max_frame = self._max_frame
        n = self._recv.n
        total = len(data)
        with memoryview(data) as mv:
            try:
                while total - pos >= 2:
                    length = (data[pos] << 8) | data[pos + 1]
                    if length > max_frame:
                        raise NoiseError(f"Noise frame of {length} bytes exceeds {max_frame}")
                    if length < TAG_LEN:
                        raise NoiseError("Noise frame shorter than its authentication tag")
                    end = pos + 2 + length
                    if end > total:
                        break
                    if n >= MAX_NONCE:
                        raise NoiseError("Noise nonce space exhausted")
                    try:
                        plain = aead.decrypt(_NONCE.pack(n), mv[pos + 2 : end], None)
                    except InvalidTag as exc:
                        raise NoiseError("Noise frame failed authentication") from exc
                    n += 1
                    if plain:
                        pending.append(plain)
                    pos = end
            finally:
                self._recv.n = n
        return pos

    def _fail(self, exc: NoiseError) -> NoReturn:
        self._recv_error = exc
        self._rbuf = bytearray()
        raise exc

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._pending.clear()
        self._rbuf = bytearray()
        await self.transport.aclose()


# --- handshake drivers ---


async def _handshake(stream: BufferedStream, hs: NoiseHandshake, key: PrivateKey) -> SecureStream:
    first = hs.start()
    if first:
        await stream.send_all(first)
    while hs.result is None:
        data = await stream.receive_some(_HANDSHAKE_READ)
        if not data:
            raise HandshakeError("connection closed during the Noise handshake")
        out = hs.receive_data(data)
        if out:
            await stream.send_all(out)
    stream.unread(hs.take_unconsumed())
    return SecureStream(stream, hs.result, PeerId.from_public_key(key.public_key()))


async def secure_outbound(
    stream: BufferedStream,
    key: PrivateKey,
    expected_peer: PeerId | None = None,
    *,
    muxers: Sequence[str] = (),
) -> SecureStream:
    """Run the handshake as initiator; refuse a remote that is not ``expected_peer`` (if given).

    ``muxers`` is optional early data (NoiseExtensions.stream_muxers) sent in message 3.
    """
    hs = NoiseHandshake(True, key, expected_peer=expected_peer, muxers=muxers)
    return await _handshake(stream, hs, key)


async def secure_inbound(
    stream: BufferedStream, key: PrivateKey, *, muxers: Sequence[str] = ()
) -> SecureStream:
    """Run the handshake as responder; ``muxers`` is early data sent in message 2."""
    hs = NoiseHandshake(False, key, muxers=muxers)
    return await _handshake(stream, hs, key)
